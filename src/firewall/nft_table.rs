//! Table messages with the flags nftnl's `Table` cannot express: no flags attribute at
//! all (touch an existing table without changing its flags), or `owner` + `persist`.
//!
//! An owned table (`NFT_TABLE_F_OWNER`, Linux 5.12) can be changed or deleted only
//! through the netlink socket that created it; with `NFT_TABLE_F_PERSIST` (Linux 6.9) it
//! outlives that socket, ownerless ("orphaned"), until a new process adopts it by setting
//! `owner` again. Part of `firewall::nft`, the one module that speaks netlink.

use std::collections::HashMap;
use std::ffi::{c_void, CStr, CString};
use std::io;
use std::ptr::NonNull;

use nftnl::nftnl_sys::{self as sys, libc as nlibc};
use nftnl::{Batch, MsgType, NlMsg, ProtoFamily};

/// `NFT_TABLE_F_OWNER`: only the creating netlink socket may change the table.
pub const F_OWNER: u32 = 0x2;
/// `NFT_TABLE_F_PERSIST`: the table outlives its owner's socket.
pub const F_PERSIST: u32 = 0x4;
/// A name no one else uses, for asking the kernel whether it knows the flags.
const PROBE_TABLE: &CStr = c"imds_proxy_probe";

/// One `NEWTABLE`/`DELTABLE` message for a table of the daemon's name.
pub struct TableMsg {
    raw: NonNull<sys::nftnl_table>,
    family: ProtoFamily,
}

impl TableMsg {
    /// `flags: None` sends no flags attribute: an existing table keeps its flags (and
    /// the kernel does not refuse to take `owner` or `persist` away from it).
    pub fn new(name: &CStr, family: ProtoFamily, flags: Option<u32>) -> Self {
        // SAFETY: nftnl_table_alloc returns a fresh table or NULL (checked); the setters
        // copy the integers and the NUL-terminated name into it. It is freed on drop.
        unsafe {
            let t = NonNull::new(sys::nftnl_table_alloc())
                .expect("libnftnl could not allocate a table");
            sys::nftnl_table_set_u32(t.as_ptr(), sys::NFTNL_TABLE_FAMILY as u16, family as u32);
            sys::nftnl_table_set_str(t.as_ptr(), sys::NFTNL_TABLE_NAME as u16, name.as_ptr());
            if let Some(flags) = flags {
                sys::nftnl_table_set_u32(t.as_ptr(), sys::NFTNL_TABLE_FLAGS as u16, flags);
            }
            Self { raw: t, family }
        }
    }
}

// SAFETY: a table message (name, family, flags) is far smaller than the buffer the batch
// provides, which has room for the largest netlink message.
unsafe impl NlMsg for TableMsg {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        let ty = match msg_type {
            MsgType::Add => nlibc::NFT_MSG_NEWTABLE,
            MsgType::Del => nlibc::NFT_MSG_DELTABLE,
        };
        // SAFETY: the caller hands a buffer with room for one message; the table pointer
        // is valid for the life of `self`.
        unsafe {
            let header = sys::nftnl_nlmsg_build_hdr(
                buf.cast(),
                ty as u16,
                self.family as u16,
                nlibc::NLM_F_ACK as u16,
                seq,
            );
            sys::nftnl_table_nlmsg_build_payload(header, self.raw.as_ptr());
        }
    }
}

impl Drop for TableMsg {
    fn drop(&mut self) {
        // SAFETY: allocated in `new`, freed once.
        unsafe { sys::nftnl_table_free(self.raw.as_ptr()) };
    }
}

/// Whether this kernel creates owned, persistent tables: a batch that creates and deletes
/// a throw-away table with both flags. A kernel without them refuses the unknown flag
/// (`EOPNOTSUPP`); nothing is left behind either way.
pub fn owner_supported(
    send: impl Fn(&nftnl::FinalizedBatch) -> io::Result<()>,
) -> io::Result<bool> {
    let mut batch = Batch::new();
    batch.add(
        &TableMsg::new(PROBE_TABLE, ProtoFamily::Ipv4, Some(F_OWNER | F_PERSIST)),
        MsgType::Add,
    );
    batch.add(
        &TableMsg::new(PROBE_TABLE, ProtoFamily::Ipv4, None),
        MsgType::Del,
    );
    match send(&batch.finalize()) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether this kernel can hook a device's egress in a `netdev` table (Linux 5.16 with
/// netfilter egress), which the macvlan guard needs: a batch that creates a throw-away
/// table with an egress chain on loopback and deletes it again. A kernel without the
/// hook (or without the netdev family) refuses the batch; nothing is left either way.
pub fn egress_supported(
    send: impl Fn(&nftnl::FinalizedBatch) -> io::Result<()>,
) -> io::Result<bool> {
    let mut batch = Batch::new();
    batch.add(
        &TableMsg::new(PROBE_TABLE, ProtoFamily::NetDev, None),
        MsgType::Add,
    );
    let table = nftnl::Table::new(PROBE_TABLE, ProtoFamily::NetDev);
    let mut chain = nftnl::Chain::new(c"egress", &table);
    // nftnl names hook 1 `In`: in the netdev family it is the egress hook.
    chain.set_hook(nftnl::Hook::In, 0);
    chain.set_device(c"lo");
    chain.set_type(nftnl::ChainType::Filter);
    chain.set_policy(nftnl::Policy::Accept);
    batch.add(&chain, MsgType::Add);
    batch.add(
        &TableMsg::new(PROBE_TABLE, ProtoFamily::NetDev, None),
        MsgType::Del,
    );
    match send(&batch.finalize()) {
        Ok(()) => Ok(true),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOENT | libc::EAFNOSUPPORT)
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// The daemon's tables present now, by family, with their flags.
pub type Tables = HashMap<(u32, CString), u32>;

/// Whether a table with these flags was left by a run that ended: persistent, no owner.
pub fn is_orphan(flags: u32) -> bool {
    flags & (F_OWNER | F_PERSIST) == F_PERSIST
}

/// Collects the family, name and flags of each `ip`, `ip6`, `bridge` and `netdev` family
/// table in a table dump (a table of another family with the same name is someone else's).
pub fn table_cb(header: &nlibc::nlmsghdr, tables: &mut Tables) -> nlibc::c_int {
    // SAFETY: `header` is a complete netlink message handed over by mnl_cb_run; the
    // table object is allocated, filled by libnftnl from that message, read, and freed
    // here; the name is copied before the free.
    unsafe {
        let t = sys::nftnl_table_alloc();
        if t.is_null() {
            return -1;
        }
        let parsed = sys::nftnl_table_nlmsg_parse(header, t);
        let family = sys::nftnl_table_get_u32(t, sys::NFTNL_TABLE_FAMILY as u16);
        if parsed >= 0
            && [
                nlibc::NFPROTO_IPV4,
                nlibc::NFPROTO_IPV6,
                nlibc::NFPROTO_BRIDGE,
                nlibc::NFPROTO_NETDEV,
            ]
            .iter()
            .any(|f| family == *f as u32)
        {
            let name = sys::nftnl_table_get_str(t, sys::NFTNL_TABLE_NAME as u16);
            let flags = sys::nftnl_table_get_u32(t, sys::NFTNL_TABLE_FLAGS as u16);
            if !name.is_null() {
                tables.insert((family, CStr::from_ptr(name).to_owned()), flags);
            }
        }
        sys::nftnl_table_free(t);
        if parsed < 0 {
            return parsed;
        }
    }
    1 // MNL_CB_OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_that_refuses_the_flags_means_plain_tables_and_other_errors_are_errors() {
        let answer = |errno: Option<i32>| {
            owner_supported(|_| match errno {
                None => Ok(()),
                Some(n) => Err(io::Error::from_raw_os_error(n)),
            })
        };
        assert!(answer(None).unwrap());
        // Linux before 6.9 (no PERSIST) and before 5.12 (no OWNER) refuse unknown flags.
        assert!(!answer(Some(libc::EOPNOTSUPP)).unwrap());
        assert_eq!(
            answer(Some(libc::EPERM)).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
    }

    #[test]
    fn a_kernel_that_refuses_the_egress_hook_means_no_macvlan_guard_and_other_errors_are_errors() {
        let answer = |errno: Option<i32>| {
            egress_supported(|_| match errno {
                None => Ok(()),
                Some(n) => Err(io::Error::from_raw_os_error(n)),
            })
        };
        assert!(answer(None).unwrap());
        // Before Linux 5.16 the netdev family knows no hook 1; without netdev tables
        // the family is missing.
        for errno in [libc::EOPNOTSUPP, libc::EAFNOSUPPORT, libc::ENOENT] {
            assert!(!answer(Some(errno)).unwrap(), "errno {errno}");
        }
        assert_eq!(
            answer(Some(libc::EPERM)).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
    }

    #[test]
    fn only_a_persistent_table_without_owner_is_an_orphan() {
        assert!(is_orphan(F_PERSIST));
        assert!(!is_orphan(F_PERSIST | F_OWNER), "its owner still runs");
        assert!(!is_orphan(0), "a plain table");
        assert!(!is_orphan(F_OWNER));
    }
}
