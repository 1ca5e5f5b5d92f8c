//! FUSE requests through the server on the passthrough file system: what the
//! wire layer adds (INIT first, lookup counting by FORGET, xattr replies).

use std::ffi::CString;
use std::fs::File;
use std::path::Path;

use proptest::prelude::*;
use zerocopy::{FromBytes, IntoBytes};

use super::Server;
use crate::filesystem::FileData;
use crate::fuse::*;
use crate::passthrough::tests::{options, Scratch};
use crate::passthrough::{FsOptions, PassthroughFs};

/// File data through a plain buffer, for tests without guest memory.
struct Bounce {
    write_data: Vec<u8>,
    read_back: Vec<u8>,
}

impl FileData for Bounce {
    fn read_from(&mut self, file: &File, offset: i64, len: usize) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        self.read_back.resize(len, 0);
        file.read_at(&mut self.read_back, offset as u64)
    }

    fn write_to(&mut self, file: &File, offset: i64, len: usize) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let len = len.min(self.write_data.len());
        file.write_at(&self.write_data[..len], offset as u64)
    }
}

fn request(opcode: u32, nodeid: u64, body: &[u8]) -> Request {
    Request {
        header: InHeader {
            len: (IN_HEADER_LEN + body.len()) as u32,
            opcode,
            unique: 1,
            nodeid,
            ..Default::default()
        },
        body: body.to_vec(),
        data_len: 0,
    }
}

fn initialised(dir: &Path) -> Server<PassthroughFs> {
    initialised_fs(PassthroughFs::new(dir, options()).unwrap())
}

fn initialised_fs(fs: PassthroughFs) -> Server<PassthroughFs> {
    let fs = Server::new(fs);
    let init = InitIn {
        major: 7,
        minor: 31,
        max_readahead: 0,
        flags: 0,
    };
    let reply = fs.handle_request(
        &request(Opcode::Init as u32, 0, init.as_bytes()),
        4096,
        &mut Bounce {
            write_data: Vec::new(),
            read_back: Vec::new(),
        },
    );
    assert!(matches!(reply, Reply::Ok(_)));
    fs
}

#[test]
fn lookups_are_counted_and_forgotten() {
    let scratch = Scratch::new("forget");
    let dir = scratch.share.clone();
    let fs = initialised(&dir);
    let mut data = Bounce {
        write_data: Vec::new(),
        read_back: Vec::new(),
    };
    for _ in 0..3 {
        let reply = fs.handle_request(
            &request(Opcode::Lookup as u32, 1, b"file\0"),
            4096,
            &mut data,
        );
        assert!(matches!(reply, Reply::Ok(_)));
    }
    assert_eq!(fs.fs().node_count(), 2, "one node for three lookups");
    let forget = ForgetIn { nlookup: 2 };
    fs.handle_request(
        &request(Opcode::Forget as u32, 2, forget.as_bytes()),
        0,
        &mut data,
    );
    assert_eq!(fs.fs().node_count(), 2);
    let forget = ForgetIn { nlookup: 1 };
    fs.handle_request(
        &request(Opcode::Forget as u32, 2, forget.as_bytes()),
        0,
        &mut data,
    );
    assert_eq!(fs.fs().node_count(), 1, "only the root is left");
    // The root is never forgotten.
    fs.handle_request(
        &request(Opcode::Forget as u32, 1, forget.as_bytes()),
        0,
        &mut data,
    );
    assert_eq!(fs.fs().node_count(), 1);
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

fn xattr_request(op: Opcode, nodeid: u64, name: &str, value: &[u8]) -> Request {
    let mut body = Vec::new();
    match op {
        Opcode::Setxattr => {
            body.extend_from_slice(
                SetxattrIn {
                    size: value.len() as u32,
                    flags: 0,
                }
                .as_bytes(),
            );
            body.extend_from_slice(name.as_bytes());
            body.push(0);
            body.extend_from_slice(value);
        }
        _ => {
            body.extend_from_slice(
                GetxattrIn {
                    size: 64,
                    padding: 0,
                }
                .as_bytes(),
            );
            body.extend_from_slice(name.as_bytes());
            body.push(0);
        }
    }
    request(op as u32, nodeid, &body)
}

/// On a kernel without the `*xattrat` calls, the xattrs of regular files go
/// through a descriptor opened for reading, and those of a FIFO are
/// unsupported: it is never opened (an open would block this thread).
#[test]
fn xattrs_without_xattrat_never_open_a_special_file() {
    let scratch = Scratch::new("xattr-fallback");
    let dir = scratch.share.clone();
    let fifo = CString::new(dir.join("fifo").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let fs = initialised_fs(
        PassthroughFs::new(&dir, options())
            .unwrap()
            .without_xattrat(),
    );
    let mut data = Bounce {
        write_data: Vec::new(),
        read_back: Vec::new(),
    };
    let mut lookup = |name: &[u8]| match fs.handle_request(
        &request(Opcode::Lookup as u32, 1, name),
        4096,
        &mut data,
    ) {
        Reply::Ok(bytes) => EntryOut::read_from_bytes(&bytes).unwrap().nodeid,
        _ => panic!("lookup"),
    };
    let (file, fifo) = (lookup(b"file\0"), lookup(b"fifo\0"));
    let set = fs.handle_request(
        &xattr_request(Opcode::Setxattr, file, "trusted.t", b"v"),
        4096,
        &mut data,
    );
    assert!(matches!(set, Reply::Ok(_)), "{set:?}");
    let got = fs.handle_request(
        &xattr_request(Opcode::Getxattr, file, "trusted.t", b""),
        4096,
        &mut data,
    );
    assert!(matches!(&got, Reply::Ok(v) if v == b"v"), "{got:?}");
    for op in [Opcode::Setxattr, Opcode::Getxattr] {
        let reply = fs.handle_request(&xattr_request(op, fifo, "trusted.t", b"v"), 4096, &mut data);
        assert!(
            matches!(reply, Reply::Err(Errno(libc::EOPNOTSUPP))),
            "{op:?}: {reply:?}"
        );
    }
    // With the calls (this kernel permitting), the FIFO's xattrs work.
    let fs = initialised(&dir);
    let fifo = match fs.handle_request(
        &request(Opcode::Lookup as u32, 1, b"fifo\0"),
        4096,
        &mut data,
    ) {
        Reply::Ok(bytes) => EntryOut::read_from_bytes(&bytes).unwrap().nodeid,
        _ => panic!("lookup"),
    };
    let set = fs.handle_request(
        &xattr_request(Opcode::Setxattr, fifo, "trusted.t", b"v"),
        4096,
        &mut data,
    );
    assert!(
        matches!(set, Reply::Ok(_) | Reply::Err(Errno(libc::EOPNOTSUPP))),
        "{set:?}"
    );
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

/// Without --xattr every xattr opcode is ENOSYS, a malformed body included (the
/// file system's answer comes before decoding); with it, the malformed body is
/// EINVAL.
#[test]
fn xattr_opcodes_without_xattrs_are_enosys_whatever_the_body() {
    let scratch = Scratch::new("xattr-off");
    let dir = scratch.share.clone();
    let mut data = Bounce {
        write_data: Vec::new(),
        read_back: Vec::new(),
    };
    let off = initialised_fs(
        PassthroughFs::new(
            &dir,
            FsOptions {
                xattr: false,
                ..options()
            },
        )
        .unwrap(),
    );
    let on = initialised(&dir);
    for op in [
        Opcode::Setxattr,
        Opcode::Getxattr,
        Opcode::Listxattr,
        Opcode::Removexattr,
    ] {
        let well_formed = xattr_request(op, 1, "trusted.t", b"v");
        let reply = off.handle_request(&well_formed, 4096, &mut data);
        assert_eq!(reply, Reply::Err(Errno::ENOSYS), "{op:?}");
        let malformed = request(op as u32, 1, &[1, 2, 3]);
        let reply = off.handle_request(&malformed, 4096, &mut data);
        assert_eq!(reply, Reply::Err(Errno::ENOSYS), "{op:?} malformed");
        let reply = on.handle_request(&malformed, 4096, &mut data);
        assert_eq!(
            reply,
            Reply::Err(Errno::EINVAL),
            "{op:?} malformed, xattrs on"
        );
    }
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    /// Arbitrary opcodes, node ids and bodies against a real folder: never a
    /// panic, and nothing appears outside the folder.
    #[test]
    fn hostile_requests_never_panic(
        requests in proptest::collection::vec(
            (0u32..60, 0u64..6, proptest::collection::vec(any::<u8>(), 0..160), 0usize..300),
            1..24,
        )
    ) {
        let scratch = Scratch::new("prop");
    let dir = scratch.share.clone();
        let fs = initialised(&dir);
        let mut data = Bounce { write_data: vec![0x5a; 64], read_back: Vec::new() };
        for (opcode, nodeid, body, room) in requests {
            let mut req = request(opcode, nodeid, &body);
            if opcode == Opcode::Write as u32 {
                req.data_len = body.len().saturating_sub(std::mem::size_of::<WriteIn>());
                req.body.truncate(std::mem::size_of::<WriteIn>());
            }
            let _ = fs.handle_request(&req, room, &mut data);
        }
        drop(fs);
        let base = dir.parent().unwrap().to_path_buf();
        let names = |d: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(d).unwrap()
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let beside = names(&base);
        let outside = names(&base.join("outside"));
        std::fs::remove_dir_all(&base).unwrap();
        prop_assert_eq!(beside, vec!["outside".to_string(), "share".to_string()]);
        prop_assert!(outside.is_empty(), "{:?}", outside);
    }
}
