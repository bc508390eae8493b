//! Notices edits of the files the daemon reads (its configuration, the emulator's
//! file) by their modification time and size: polled, so an editor's
//! write-and-rename counts as well as an in-place write.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// One watched file (or none: never changes).
#[derive(Debug)]
pub(super) struct FileWatch {
    path: Option<PathBuf>,
    stamp: Option<(SystemTime, u64)>,
}

impl FileWatch {
    pub fn new(path: Option<&Path>) -> Self {
        let path = path.map(Path::to_path_buf);
        let stamp = path.as_deref().and_then(stamp);
        Self { path, stamp }
    }

    /// Whether the file changed (or appeared, or went) since the last look.
    pub fn changed(&mut self) -> bool {
        let now = self.path.as_deref().and_then(stamp);
        let changed = now != self.stamp;
        self.stamp = now;
        changed
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edit_is_noticed_once() {
        let dir = std::env::temp_dir().join(format!("imds-proxy-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.toml");
        std::fs::write(&file, "a = 1\n").unwrap();
        let mut w = FileWatch::new(Some(&file));
        assert!(!w.changed());
        std::fs::write(&file, "a = 12\n").unwrap();
        assert!(w.changed());
        assert!(!w.changed());
        std::fs::remove_file(&file).unwrap();
        assert!(w.changed(), "a file that went is a change");
        std::fs::remove_dir(&dir).unwrap();
        assert!(!FileWatch::new(None).changed());
    }
}
