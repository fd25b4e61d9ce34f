//! A full disk: an operation that fails for lack of space deletes its own temporary files at
//! once (the image store's writers do that on every error), and then what it had already
//! stored that no image references (the blobs and layers of an import that did not finish, the
//! partial downloads of a pull), so that the space is free again at once — not at the next
//! restart of berthd. Running containers are not touched.

use std::sync::atomic::Ordering;

use tracing::{info, warn};

use super::table::Registry;

/// Whether an error message says the file system is full (ENOSPC) or the quota is reached
/// (EDQUOT). Errors from every layer end in the `io::Error` text, which names the errno.
pub fn is_storage_full(msg: &str) -> bool {
    msg.contains("(os error 28)") || msg.contains("(os error 122)")
}

impl Registry {
    /// After an image operation ended (`full`: it failed for lack of space): reclaim what no
    /// image references, now if no other operation is in flight, else when the last one ends.
    pub(super) async fn after_operation(&self, full: bool) {
        if full {
            self.reclaim_pending.store(true, Ordering::SeqCst);
        }
        if self.operations.load(Ordering::SeqCst) != 0
            || !self.reclaim_pending.swap(false, Ordering::SeqCst)
        {
            return;
        }
        let store = self.images.clone();
        match tokio::task::spawn_blocking(move || store.reclaim()).await {
            Ok(Ok(n)) => {
                info!("reclaimed the space of a failed image operation ({n} files and directories)")
            }
            Ok(Err(e)) => {
                warn!("cannot reclaim the space of a failed image operation: {e}, ignoring")
            }
            Err(e) => warn!("cannot reclaim the space of a failed image operation: {e}, ignoring"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disks_are_told_from_other_failures() {
        let e = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(is_storage_full(&format!("layer sha256:00: writing: {e}")));
        let e = std::io::Error::from_raw_os_error(libc::EDQUOT);
        assert!(is_storage_full(&e.to_string()));
        let e = std::io::Error::from_raw_os_error(libc::EIO);
        assert!(!is_storage_full(&e.to_string()));
    }
}
