//! How every module shows an error: the error and each of its causes on one line. A
//! leaf: it imports nothing of ours, so any module may use it without an import circle.

/// `outer: cause: root cause`, for logs and messages.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
