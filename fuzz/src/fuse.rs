//! Target `fuse`: FUSE requests through the vhost-fs server on the passthrough file
//! system, as the fs worker (vhost-fs `worker.rs`, `serve_chain`) serves a chain:
//! [`fuse::read_request`] on the request bytes, [`Server::handle_request`] (FUSE
//! decoding, then the typed call on [`PassthroughFs`]), then [`fuse::write_reply`]. Several requests per input, so LOOKUP, OPEN, READ
//! chains (and CREATE, WRITE, RENAME, ...) are reachable.
//!
//! The shared folder is `share/` in a scratch folder made once per process, put
//! back before every input: a file `file` (64 bytes), `empty`, a folder `dir`
//! holding `inner`, and symlinks `link` -> `file`, `escape` -> `../outside`,
//! `abs` -> the absolute path of `outside`, `up` -> `..`. Beside it, `outside/`
//! stays empty: after every input the scratch folder must hold exactly `share`
//! and `outside`, and `outside` nothing, or the process aborts (a write outside
//! the shared folder). Files are limited to 16 MiB (RLIMIT_FSIZE; SIGXFSZ
//! ignored, so the call fails with EFBIG) so FALLOCATE or SETATTR cannot fill
//! the machine.
//!
//! Input layout:
//!
//! | bytes | field                                                              |
//! |-------|--------------------------------------------------------------------|
//! | 1     | session: bit 0 read-only, bit 1 xattr, bits 2-3 cache (auto, always, never, auto), bit 4 announce submounts, bit 5 inodes as file handles, bit 6 allow O_DIRECT, bit 7 no INIT from the harness (the input's own requests must begin with one) |
//!
//! then up to 64 requests, each:
//!
//! | bytes | field                                                              |
//! |-------|--------------------------------------------------------------------|
//! | 2     | L: length of the request (the chain's readable bytes)              |
//! | 1     | reply room (the chain's writable bytes): b * 64; 255: 1 MiB + 4 KiB |
//! | 1     | fix-ups: unless bit 0, the header's `len` is set to L; unless bit 1, a WRITE's `size` is set to its data length (so the fuzzer need not match lengths) |
//! | L     | `fuse_in_header`, then the body (for WRITE: `fuse_write_in`, then the data) |

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use vhost_fs::config::CachePolicy;
use vhost_fs::filesystem::FileData;
use vhost_fs::fuse::{
    self, InHeader, InitIn, Opcode, Reply, WriteIn, IN_HEADER_LEN, MAX_WRITE, OUT_HEADER_LEN,
};
use vhost_fs::passthrough::{FsOptions, PassthroughFs};
use vhost_fs::server::Server;
use zerocopy::IntoBytes;

use crate::input::Input;

/// Most requests taken from one input.
pub const MAX_REQUESTS: usize = 64;
/// Largest file the target process may make.
pub const FILE_SIZE_LIMIT: u64 = 16 << 20;
/// Session bits.
pub const S_READONLY: u8 = 1;
pub const S_XATTR: u8 = 2;
pub const S_SUBMOUNTS: u8 = 0x10;
pub const S_FILE_HANDLES: u8 = 0x20;
pub const S_DIRECT_IO: u8 = 0x40;
pub const S_NO_INIT: u8 = 0x80;
/// Fix-up bits.
pub const F_KEEP_LEN: u8 = 1;
pub const F_KEEP_WRITE_SIZE: u8 = 2;

struct State {
    base: PathBuf,
    share: PathBuf,
    outside: PathBuf,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

pub fn run(data: &[u8]) {
    let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let state = guard.get_or_insert_with(State::new);
    state.run(data);
}

impl State {
    fn new() -> Self {
        limit_file_size();
        let base = crate::scratch::fresh("fuse");
        let outside = base.join("outside");
        std::fs::create_dir(&outside).expect("make outside/");
        State {
            share: base.join("share"),
            outside,
            base,
        }
    }

    /// Puts the shared folder back as it starts.
    fn reset_share(&self) {
        crate::scratch::wipe(&self.share);
        let share = &self.share;
        let made = (|| -> std::io::Result<()> {
            std::fs::create_dir(share)?;
            let contents: Vec<u8> = (0..64u8).collect();
            std::fs::write(share.join("file"), contents)?;
            std::fs::write(share.join("empty"), b"")?;
            std::fs::create_dir(share.join("dir"))?;
            std::fs::write(share.join("dir/inner"), b"inner file\n")?;
            std::os::unix::fs::symlink("file", share.join("link"))?;
            std::os::unix::fs::symlink("../outside", share.join("escape"))?;
            std::os::unix::fs::symlink(&self.outside, share.join("abs"))?;
            std::os::unix::fs::symlink("..", share.join("up"))?;
            Ok(())
        })();
        if let Err(e) = made {
            panic!("cannot make the shared folder {}: {e}", share.display());
        }
    }

    fn run(&mut self, data: &[u8]) {
        self.reset_share();
        let mut input = Input::new(data);
        let session = input.u8();
        let options = FsOptions {
            readonly: session & S_READONLY != 0,
            xattr: session & S_XATTR != 0,
            cache: match (session >> 2) & 3 {
                1 => CachePolicy::Always,
                2 => CachePolicy::Never,
                _ => CachePolicy::Auto,
            },
            announce_submounts: session & S_SUBMOUNTS != 0,
            file_handles: session & S_FILE_HANDLES != 0,
            allow_direct_io: session & S_DIRECT_IO != 0,
        };
        let fs = Server::new(match PassthroughFs::new(&self.share, options) {
            Ok(fs) => fs,
            // File handles need CAP_DAC_READ_SEARCH and a file system with them
            // (the daemon checks at start-up and falls back): without, serve
            // with descriptors.
            Err(_) if options.file_handles => PassthroughFs::new(
                &self.share,
                FsOptions {
                    file_handles: false,
                    ..options
                },
            )
            .expect("passthrough file system"),
            Err(e) => panic!("passthrough file system: {e}"),
        });
        if session & S_NO_INIT == 0 {
            let init = InitIn {
                major: fuse::KERNEL_VERSION,
                minor: fuse::KERNEL_MINOR_VERSION,
                max_readahead: 1 << 17,
                flags: u32::MAX,
            };
            let reply = serve(&fs, &request_bytes(Opcode::Init, 0, init.as_bytes()), 4096);
            assert!(
                matches!(reply, Some(Reply::Ok(_))),
                "INIT refused: {reply:?}"
            );
        }
        let mut bytes = Vec::new();
        for _ in 0..MAX_REQUESTS {
            if input.is_empty() {
                break;
            }
            let len = usize::from(input.u16());
            let room_sel = input.u8();
            let fixups = input.u8();
            bytes.clear();
            bytes.extend_from_slice(input.take(len));
            let room = if room_sel == 255 {
                MAX_WRITE as usize + 4096
            } else {
                usize::from(room_sel) * 64
            };
            if fixups & F_KEEP_LEN == 0 && bytes.len() >= 4 {
                let n = bytes.len() as u32;
                bytes[..4].copy_from_slice(&n.to_le_bytes());
            }
            let write_in = IN_HEADER_LEN + std::mem::size_of::<WriteIn>();
            let is_write = bytes.len() >= 8
                && u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]])
                    == Opcode::Write as u32;
            if fixups & F_KEEP_WRITE_SIZE == 0 && is_write && bytes.len() >= write_in {
                // fuse_write_in.size is at offset 16.
                let n = (bytes.len() - write_in) as u32;
                bytes[IN_HEADER_LEN + 16..IN_HEADER_LEN + 20].copy_from_slice(&n.to_le_bytes());
            }
            serve(&fs, &bytes, room);
        }
        drop(fs);
        self.check_nothing_escaped();
    }

    /// Aborts if anything appeared beside the shared folder.
    fn check_nothing_escaped(&self) {
        let names = |dir: &Path| -> Vec<String> {
            let mut names: Vec<String> = match std::fs::read_dir(dir) {
                Ok(entries) => entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect(),
                Err(e) => vec![format!("<cannot read {}: {e}>", dir.display())],
            };
            names.sort();
            names
        };
        let beside = names(&self.base);
        let outside = names(&self.outside);
        if beside != ["outside", "share"] || !outside.is_empty() {
            eprintln!(
                "fuse target: written outside the shared folder: {} holds {beside:?}, {} holds {outside:?}",
                self.base.display(),
                self.outside.display()
            );
            std::process::abort();
        }
    }
}

/// One request as the worker serves it; None when there is nothing to answer.
fn serve(fs: &Server<PassthroughFs>, bytes: &[u8], room: usize) -> Option<Reply> {
    let available = bytes.len();
    let (unique, reply) = match fuse::read_request(&mut &bytes[..], available) {
        Ok(request) => {
            assert_eq!(request.header.len as usize, available);
            assert_eq!(
                IN_HEADER_LEN + request.body.len() + request.data_len,
                available
            );
            let data_start = IN_HEADER_LEN + request.body.len();
            let mut data = Data {
                write: &bytes[data_start..],
                read: Vec::new(),
            };
            let reply = fs.handle_request(&request, room, &mut data);
            if let Reply::InPlace(n) = reply {
                assert!(
                    n <= room.saturating_sub(OUT_HEADER_LEN),
                    "READ of {n} bytes for {room} bytes of room"
                );
                assert!(n <= data.read.len());
            }
            (request.header.unique, reply)
        }
        Err((Some(header), _)) => (header.unique, Reply::Err(fuse::Errno::EINVAL)),
        Err((None, _)) => return None,
    };
    let mut out = Vec::new();
    if let Ok(n) = fuse::write_reply(&mut out, room, unique, &reply) {
        assert!(n <= room, "reply of {n} bytes for {room} bytes of room");
        if !matches!(reply, Reply::InPlace(_)) {
            assert_eq!(n, out.len());
        }
    }
    Some(reply)
}

/// The request's data as the worker's guest buffers give it: WRITE data from the
/// bytes after `fuse_write_in`, READ data into a buffer.
struct Data<'a> {
    write: &'a [u8],
    read: Vec<u8>,
}

impl FileData for Data<'_> {
    fn read_from(&mut self, file: &File, offset: i64, len: usize) -> std::io::Result<usize> {
        self.read.resize(len, 0);
        let offset = u64::try_from(offset).map_err(|_| std::io::Error::other("negative offset"))?;
        file.read_at(&mut self.read, offset)
    }

    fn write_to(&mut self, file: &File, offset: i64, len: usize) -> std::io::Result<usize> {
        let offset = u64::try_from(offset).map_err(|_| std::io::Error::other("negative offset"))?;
        file.write_at(&self.write[..len.min(self.write.len())], offset)
    }
}

/// A whole request: header (len, opcode, unique 1, node id) and body.
pub fn request_bytes(opcode: Opcode, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let header = InHeader {
        len: (IN_HEADER_LEN + body.len()) as u32,
        opcode: opcode as u32,
        unique: 1,
        nodeid,
        ..Default::default()
    };
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend_from_slice(body);
    bytes
}

/// Caps the size of files this process makes; a write past it fails with EFBIG
/// instead of raising SIGXFSZ.
fn limit_file_size() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only write and read the rlimit we pass;
    // ignoring SIGXFSZ changes only this process's disposition of that signal.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit) != 0 {
            panic!("getrlimit: {}", std::io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max.min(FILE_SIZE_LIMIT);
        if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
            panic!(
                "cannot limit file sizes: {}",
                std::io::Error::last_os_error()
            );
        }
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}
