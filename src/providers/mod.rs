//! What each metadata protocol requires of a request, and which identity a container
//! may use with it: shared by the proxy in front of a real service and the emulator.

pub mod identity;
