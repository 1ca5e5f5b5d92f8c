//! The requester's credentials for the calls that make a node (CREATE, MKDIR,
//! MKNOD, SYMLINK) or open one on its behalf: this thread's file-system uid and
//! gid become the guest user's for the length of a [`Credentials`] guard, so new
//! files belong to that user and the host checks that user's permissions.

use super::sys;
use crate::filesystem::Context;

/// This thread's fs credentials switched to a requester's, switched back on drop.
#[must_use = "the credentials are switched back when the guard is dropped"]
pub struct Credentials {
    switched: bool,
}

impl Credentials {
    /// Switches to `ctx`'s uid and gid. Nothing to do unless the daemon runs as
    /// root (it could not switch), or for a root requester (our fs credentials are
    /// root's already: four system calls saved per CREATE, MKDIR... from a root
    /// guest).
    pub fn switch(ctx: Context) -> Credentials {
        if sys::geteuid() != 0 {
            return Credentials { switched: false };
        }
        if ctx.uid == 0 && ctx.gid == 0 {
            return Credentials { switched: false };
        }
        sys::set_fs_ids(ctx.uid, ctx.gid);
        Credentials { switched: true }
    }
}

impl Drop for Credentials {
    fn drop(&mut self) {
        if self.switched {
            sys::reset_fs_ids();
        }
    }
}
