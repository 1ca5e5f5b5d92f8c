//! The seed corpus: for each target a few valid inputs, one per kind of request
//! (and a few classic malformed ones), written to `fuzz/corpus/<target>/` by the
//! `gen_corpus` binary (`cargo run -p vhostkit-fuzz --bin gen_corpus`). A test
//! checks that the committed files are what this module makes.

use vhost_fs::fuse::{
    AccessIn, CopyFileRangeIn, CreateIn, FallocateIn, FlushIn, ForgetIn, FsyncIn, GetattrIn,
    GetxattrIn, InHeader, InitIn, LinkIn, LseekIn, MkdirIn, MknodIn, Opcode, OpenIn, ReadIn,
    ReleaseIn, Rename2In, RenameIn, SetattrIn, SetxattrIn, WriteIn, IN_HEADER_LEN,
};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_RX,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use zerocopy::IntoBytes;

use crate::ring::{DATA, OPT_EVENT_IDX};

/// A named seed.
pub type Seed = (&'static str, Vec<u8>);

/// Every target's seeds.
pub fn all() -> Vec<(&'static str, Vec<Seed>)> {
    vec![
        ("blk_request", blk_request()),
        ("net_tx", net_tx()),
        ("net_ctrl", net_ctrl()),
        ("fuse", fuse()),
        ("vmm_mmio", vmm_mmio()),
        ("vmm_config", vmm_config()),
    ]
}

// ---- rings (blk_request, net_tx) --------------------------------------------------

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

/// A ring input (layout in [`crate::ring`]): queue of `1 << size_exp` entries,
/// `descs` (addr, len, flags, next) from index 0, `heads` offered, and guest memory
/// bytes placed at the given addresses (at or after [`DATA`]).
struct Ring {
    size_exp: u8,
    options: u8,
    descs: Vec<(u64, u32, u16, u16)>,
    heads: Vec<u16>,
    memory: Vec<u8>,
}

impl Ring {
    fn new(options: u8) -> Self {
        Ring {
            size_exp: 3,
            options,
            descs: Vec::new(),
            heads: Vec::new(),
            memory: Vec::new(),
        }
    }

    /// Adds a chain of (addr, len, flags) descriptors (NEXT links added) and
    /// offers it.
    fn chain(mut self, descs: &[(u64, u32, u16)]) -> Self {
        let first = self.descs.len() as u16;
        self.heads.push(first);
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let last = i + 1 == descs.len();
            let index = first + i as u16;
            let (flags, next) = if last {
                (flags, 0)
            } else {
                (flags | NEXT, index + 1)
            };
            self.descs.push((addr, len, flags, next));
        }
        self
    }

    fn put(mut self, addr: u64, bytes: &[u8]) -> Self {
        let at = (addr - DATA) as usize;
        if self.memory.len() < at + bytes.len() {
            self.memory.resize(at + bytes.len(), 0);
        }
        self.memory[at..at + bytes.len()].copy_from_slice(bytes);
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let size = 1usize << self.size_exp;
        let mut out = vec![self.size_exp, self.options];
        out.extend_from_slice(&0u16.to_le_bytes()); // avail flags
        out.extend_from_slice(&(self.heads.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // used_event
        for i in 0..size {
            let (addr, len, flags, next) = self.descs.get(i).copied().unwrap_or_default();
            out.extend_from_slice(&addr.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&flags.to_le_bytes());
            out.extend_from_slice(&next.to_le_bytes());
        }
        for i in 0..size {
            out.extend_from_slice(&self.heads.get(i).copied().unwrap_or_default().to_le_bytes());
        }
        out.extend_from_slice(&self.memory);
        out
    }
}

fn blk_header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = kind.to_le_bytes().to_vec();
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

fn blk_segment(sector: u64, sectors: u32, flags: u32) -> Vec<u8> {
    let mut s = sector.to_le_bytes().to_vec();
    s.extend_from_slice(&sectors.to_le_bytes());
    s.extend_from_slice(&flags.to_le_bytes());
    s
}

fn raw_desc(addr: u64, len: u32, flags: u16, next: u16) -> Vec<u8> {
    let mut d = addr.to_le_bytes().to_vec();
    d.extend_from_slice(&len.to_le_bytes());
    d.extend_from_slice(&flags.to_le_bytes());
    d.extend_from_slice(&next.to_le_bytes());
    d
}

const HDR: u64 = 0x1000;
const BUF: u64 = 0x1100;
const STATUS: u64 = 0x1f00;

pub fn blk_request() -> Vec<Seed> {
    let simple = |kind: u32, sector: u64, data: Option<(u64, u32, u16)>| {
        let mut descs = vec![(HDR, 16, 0)];
        descs.extend(data);
        descs.push((STATUS, 1, WRITE));
        Ring::new(0)
            .chain(&descs)
            .put(HDR, &blk_header(kind, sector))
    };
    let mut segments = blk_segment(8, 8, 0);
    segments.extend(blk_segment(64, 16, 0));
    let indirect_table = [
        raw_desc(HDR, 16, NEXT, 1),
        raw_desc(BUF, 1024, WRITE | NEXT, 2),
        raw_desc(STATUS, 1, WRITE, 0),
    ]
    .concat();
    vec![
        (
            "read",
            simple(VIRTIO_BLK_T_IN, 1, Some((BUF, 512, WRITE))).bytes(),
        ),
        (
            "write",
            simple(VIRTIO_BLK_T_OUT, 2, Some((BUF, 1024, 0)))
                .put(BUF, &[0x5a; 1024])
                .bytes(),
        ),
        // Data crossing from one memory region into the next: two iovecs.
        (
            "write_across_regions",
            simple(VIRTIO_BLK_T_OUT, 0, Some((0x7e00, 1024, 0))).bytes(),
        ),
        ("flush", simple(VIRTIO_BLK_T_FLUSH, 0, None).bytes()),
        (
            "get_id",
            simple(VIRTIO_BLK_T_GET_ID, 0, Some((BUF, 20, WRITE))).bytes(),
        ),
        (
            "discard",
            simple(VIRTIO_BLK_T_DISCARD, 0, Some((BUF, 32, 0)))
                .put(BUF, &segments)
                .bytes(),
        ),
        (
            "write_zeroes_unmap",
            simple(VIRTIO_BLK_T_WRITE_ZEROES, 0, Some((BUF, 16, 0)))
                .put(BUF, &blk_segment(0, 2048, 1))
                .bytes(),
        ),
        ("unsupported", simple(77, 0, None).bytes()),
        (
            "indirect_read",
            Ring::new(0)
                .chain(&[(0x1c00, 48, INDIRECT)])
                .put(0x1c00, &indirect_table)
                .put(HDR, &blk_header(VIRTIO_BLK_T_IN, 0))
                .bytes(),
        ),
        (
            "three_requests_event_idx",
            Ring::new(OPT_EVENT_IDX)
                .chain(&[(HDR, 16, 0), (BUF, 512, WRITE), (STATUS, 1, WRITE)])
                .chain(&[(0x1010, 16, 0), (0x1400, 512, 0), (0x1f01, 1, WRITE)])
                .chain(&[(0x1020, 16, 0), (0x1f02, 1, WRITE)])
                .put(HDR, &blk_header(VIRTIO_BLK_T_IN, 0))
                .put(0x1010, &blk_header(VIRTIO_BLK_T_OUT, 8))
                .put(0x1020, &blk_header(VIRTIO_BLK_T_FLUSH, 0))
                .bytes(),
        ),
        ("read_only_disk_write", {
            let mut r = simple(VIRTIO_BLK_T_OUT, 0, Some((BUF, 512, 0)));
            r.options = 4;
            r.bytes()
        }),
        // A descriptor whose next is itself.
        ("loop", {
            let mut r = Ring::new(0).chain(&[(HDR, 16, 0)]);
            r.descs[0].2 = NEXT;
            r.put(HDR, &blk_header(VIRTIO_BLK_T_IN, 0)).bytes()
        }),
    ]
}

pub fn net_tx() -> Vec<Seed> {
    use crate::net_tx::{OPT_LEGACY_HDR, OPT_MERGEABLE, OPT_RX};
    let frame: Vec<u8> = (0..72u8).collect(); // 12-byte header, 60-byte frame
    let table = [raw_desc(0x1000, 12, NEXT, 1), raw_desc(0x100c, 60, 0, 0)].concat();
    vec![
        (
            "tx_one_buffer",
            Ring::new(0)
                .chain(&[(0x1000, 72, 0)])
                .put(0x1000, &frame)
                .bytes(),
        ),
        (
            "tx_header_apart",
            Ring::new(0)
                .chain(&[(0x1000, 12, 0), (0x100c, 60, 0)])
                .put(0x1000, &frame)
                .bytes(),
        ),
        (
            "tx_legacy_header",
            Ring::new(OPT_LEGACY_HDR)
                .chain(&[(0x1000, 70, 0)])
                .put(0x1000, &frame)
                .bytes(),
        ),
        (
            "tx_indirect",
            Ring::new(0)
                .chain(&[(0x1100, 32, INDIRECT)])
                .put(0x1100, &table)
                .put(0x1000, &frame)
                .bytes(),
        ),
        (
            "tx_two_frames_across_regions",
            Ring::new(OPT_EVENT_IDX)
                .chain(&[(0x7fe0, 72, 0)])
                .chain(&[(0x20000, 12, 0), (0x20100, 1514, 0)])
                .bytes(),
        ),
        (
            "rx_one_buffer",
            Ring::new(OPT_RX).chain(&[(0x2000, 1526, WRITE)]).bytes(),
        ),
        (
            "rx_mergeable",
            Ring::new(OPT_RX | OPT_MERGEABLE)
                .chain(&[(0x2000, 1536, WRITE)])
                .chain(&[(0x3000, 1536, WRITE), (0x4000, 64, WRITE)])
                .bytes(),
        ),
    ]
}

pub fn net_ctrl() -> Vec<Seed> {
    let cmd = |pairs: u8, class: u32, cmd: u32, data: &[u8]| {
        let mut v = vec![pairs, class as u8, cmd as u8];
        v.extend_from_slice(data);
        v
    };
    let mut table = 1u32.to_le_bytes().to_vec();
    table.extend_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    table.extend_from_slice(&2u32.to_le_bytes());
    table.extend_from_slice(&[0x01, 0, 0x5e, 0, 0, 1, 0x33, 0x33, 0, 0, 0, 1]);
    vec![
        (
            "mq_pairs",
            cmd(3, VIRTIO_NET_CTRL_MQ, 0, &2u16.to_le_bytes()),
        ),
        ("rx_promisc", cmd(0, VIRTIO_NET_CTRL_RX, 0, &[1])),
        ("rx_nobcast", cmd(0, VIRTIO_NET_CTRL_RX, 5, &[0])),
        ("mac_table", cmd(0, VIRTIO_NET_CTRL_MAC, 0, &table)),
        (
            "mac_addr",
            cmd(
                0,
                VIRTIO_NET_CTRL_MAC,
                1,
                &[0x52, 0x54, 0, 0xab, 0xcd, 0xef],
            ),
        ),
        ("announce_ack", cmd(0, VIRTIO_NET_CTRL_ANNOUNCE, 0, &[])),
    ]
}

// ---- fuse -----------------------------------------------------------------------------

fn fuse_request(opcode: Opcode, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let header = InHeader {
        len: (IN_HEADER_LEN + body.len()) as u32,
        opcode: opcode as u32,
        unique: 7,
        nodeid,
        uid: 0,
        gid: 0,
        pid: 1,
        ..Default::default()
    };
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend_from_slice(body);
    bytes
}

/// A fuse input: the session byte, then records of (room selector, request).
fn fuse_input(session: u8, requests: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![session];
    for (room, bytes) in requests {
        out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        out.push(*room);
        out.push(0);
        out.extend_from_slice(bytes);
    }
    out
}

fn with_name<T: IntoBytes + zerocopy::Immutable>(value: &T, names: &[&[u8]]) -> Vec<u8> {
    let mut body = value.as_bytes().to_vec();
    for name in names {
        body.extend_from_slice(name);
        body.push(0);
    }
    body
}

pub fn fuse() -> Vec<Seed> {
    use Opcode::*;
    const ROOM: u8 = 64; // 4 KiB
    let r = |op: Opcode, node: u64, body: Vec<u8>| (ROOM, fuse_request(op, node, &body));
    let name = |n: &[u8]| [n, b"\0"].concat();
    let read = |fh: u64, size: u32| ReadIn {
        fh,
        size,
        ..Default::default()
    };
    let release = |fh: u64| ReleaseIn {
        fh,
        ..Default::default()
    };
    // Node 2 is the first node looked up; file handles count from 1.
    let lookup_file = r(Lookup, 1, name(b"file"));
    let open_rw = |node: u64| {
        r(
            Open,
            node,
            OpenIn {
                flags: libc::O_RDWR as u32,
                open_flags: 0,
            }
            .as_bytes()
            .to_vec(),
        )
    };
    let write = {
        let mut body = WriteIn {
            fh: 1,
            offset: 4,
            size: 5,
            ..Default::default()
        }
        .as_bytes()
        .to_vec();
        body.extend_from_slice(b"hello");
        r(Write, 0, body)
    };
    let setattr = SetattrIn {
        valid: 1 | 8 | 16 | 32, // mode, size, atime, mtime
        mode: 0o600,
        size: 10,
        atime: 1_000_000,
        mtime: 2_000_000,
        ..Default::default()
    };
    let init = InitIn {
        major: 7,
        minor: 31,
        max_readahead: 1 << 17,
        flags: 0xffff_ffff,
    };
    let getxattr = |size: u32| GetxattrIn { size, padding: 0 };
    vec![
        (
            "lookup_open_read_release",
            fuse_input(
                0,
                &[
                    lookup_file.clone(),
                    r(Open, 2, OpenIn::default().as_bytes().to_vec()),
                    r(Read, 2, read(1, 64).as_bytes().to_vec()),
                    r(
                        Flush,
                        2,
                        FlushIn {
                            fh: 1,
                            ..Default::default()
                        }
                        .as_bytes()
                        .to_vec(),
                    ),
                    r(Release, 2, release(1).as_bytes().to_vec()),
                    r(Forget, 2, ForgetIn { nlookup: 1 }.as_bytes().to_vec()),
                ],
            ),
        ),
        (
            "readdir_readdirplus",
            fuse_input(
                0,
                &[
                    r(Lookup, 1, name(b"dir")),
                    r(Opendir, 1, OpenIn::default().as_bytes().to_vec()),
                    r(Readdir, 1, read(1, 4096).as_bytes().to_vec()),
                    r(Readdirplus, 1, read(1, 4096).as_bytes().to_vec()),
                    r(Releasedir, 1, release(1).as_bytes().to_vec()),
                    r(Opendir, 2, OpenIn::default().as_bytes().to_vec()),
                    r(Readdirplus, 2, read(2, 4096).as_bytes().to_vec()),
                ],
            ),
        ),
        (
            "create_write_fsync",
            fuse_input(
                0,
                &[
                    r(
                        Create,
                        1,
                        with_name(
                            &CreateIn {
                                flags: libc::O_RDWR as u32,
                                mode: 0o100644,
                                umask: 0o022,
                                open_flags: 0,
                            },
                            &[b"new"],
                        ),
                    ),
                    write.clone(),
                    r(
                        Fsync,
                        2,
                        FsyncIn {
                            fh: 1,
                            fsync_flags: 1,
                            padding: 0,
                        }
                        .as_bytes()
                        .to_vec(),
                    ),
                    r(
                        Getattr,
                        2,
                        GetattrIn {
                            getattr_flags: 1,
                            dummy: 0,
                            fh: 1,
                        }
                        .as_bytes()
                        .to_vec(),
                    ),
                    r(
                        Lseek,
                        2,
                        LseekIn {
                            fh: 1,
                            offset: 0,
                            whence: libc::SEEK_DATA as u32,
                            padding: 0,
                        }
                        .as_bytes()
                        .to_vec(),
                    ),
                    r(
                        Fallocate,
                        2,
                        FallocateIn {
                            fh: 1,
                            offset: 0,
                            length: 8192,
                            mode: 0,
                            padding: 0,
                        }
                        .as_bytes()
                        .to_vec(),
                    ),
                    r(Release, 2, release(1).as_bytes().to_vec()),
                ],
            ),
        ),
        (
            "open_write_setattr",
            fuse_input(
                0,
                &[
                    lookup_file.clone(),
                    open_rw(2),
                    write.clone(),
                    r(Setattr, 2, setattr.as_bytes().to_vec()),
                    r(Getattr, 2, GetattrIn::default().as_bytes().to_vec()),
                ],
            ),
        ),
        (
            "mkdir_mknod_symlink_link",
            fuse_input(
                0,
                &[
                    r(
                        Mkdir,
                        1,
                        with_name(
                            &MkdirIn {
                                mode: 0o40755,
                                umask: 0,
                            },
                            &[b"sub"],
                        ),
                    ),
                    r(
                        Mknod,
                        1,
                        with_name(
                            &MknodIn {
                                mode: 0o10644,
                                rdev: 0,
                                umask: 0,
                                padding: 0,
                            },
                            &[b"fifo"],
                        ),
                    ),
                    r(Symlink, 1, [name(b"sym"), name(b"file")].concat()),
                    r(Readlink, 4, Vec::new()),
                    lookup_file.clone(),
                    r(Link, 1, with_name(&LinkIn { oldnodeid: 5 }, &[b"hard"])),
                ],
            ),
        ),
        (
            "rename_unlink_rmdir",
            fuse_input(
                0,
                &[
                    r(
                        Rename,
                        1,
                        with_name(&RenameIn { newdir: 1 }, &[b"file", b"moved"]),
                    ),
                    r(
                        Rename2,
                        1,
                        with_name(
                            &Rename2In {
                                newdir: 1,
                                flags: 2,
                                padding: 0,
                            },
                            &[b"moved", b"empty"],
                        ),
                    ),
                    r(Unlink, 1, name(b"moved")),
                    r(Lookup, 1, name(b"dir")),
                    r(Unlink, 2, name(b"inner")),
                    r(Rmdir, 1, name(b"dir")),
                ],
            ),
        ),
        (
            "xattr",
            fuse_input(
                crate::fuse::S_XATTR,
                &[
                    lookup_file.clone(),
                    r(
                        Setxattr,
                        2,
                        [
                            SetxattrIn { size: 3, flags: 0 }.as_bytes(),
                            b"user.fuzz\0",
                            b"abc",
                        ]
                        .concat(),
                    ),
                    r(Getxattr, 2, with_name(&getxattr(64), &[b"user.fuzz"])),
                    r(Getxattr, 2, with_name(&getxattr(0), &[b"user.fuzz"])),
                    r(Listxattr, 2, getxattr(64).as_bytes().to_vec()),
                    r(Removexattr, 2, name(b"user.fuzz")),
                ],
            ),
        ),
        (
            "statfs_access_copy_syncfs",
            fuse_input(
                0,
                &[
                    r(Statfs, 1, Vec::new()),
                    r(
                        Access,
                        1,
                        AccessIn {
                            mask: 7,
                            padding: 0,
                        }
                        .as_bytes()
                        .to_vec(),
                    ),
                    lookup_file.clone(),
                    open_rw(2),
                    open_rw(2),
                    r(
                        CopyFileRange,
                        2,
                        CopyFileRangeIn {
                            fh_in: 1,
                            off_in: 0,
                            nodeid_out: 2,
                            fh_out: 2,
                            off_out: 64,
                            len: 32,
                            flags: 0,
                        }
                        .as_bytes()
                        .to_vec(),
                    ),
                    r(Syncfs, 1, Vec::new()),
                    r(
                        BatchForget,
                        0,
                        [1u32.to_le_bytes(), 0u32.to_le_bytes()]
                            .concat()
                            .into_iter()
                            .chain(2u64.to_le_bytes())
                            .chain(1u64.to_le_bytes())
                            .collect(),
                    ),
                    r(Destroy, 0, Vec::new()),
                ],
            ),
        ),
        (
            "own_init_readonly_file_handles",
            fuse_input(
                crate::fuse::S_NO_INIT | crate::fuse::S_READONLY | crate::fuse::S_FILE_HANDLES | 8,
                &[
                    r(Init, 0, init.as_bytes().to_vec()),
                    lookup_file.clone(),
                    open_rw(2),
                    r(Open, 2, OpenIn::default().as_bytes().to_vec()),
                    (255, fuse_request(Read, 2, read(1, 1 << 20).as_bytes())),
                ],
            ),
        ),
        (
            "symlinks_out",
            fuse_input(
                0,
                &[
                    r(Lookup, 1, name(b"escape")),
                    r(Lookup, 1, name(b"abs")),
                    r(Lookup, 1, name(b"up")),
                    r(Open, 2, OpenIn::default().as_bytes().to_vec()),
                    r(
                        Create,
                        2,
                        with_name(
                            &CreateIn {
                                flags: libc::O_RDWR as u32,
                                mode: 0o100644,
                                umask: 0,
                                open_flags: 0,
                            },
                            &[b"x"],
                        ),
                    ),
                    r(
                        Mkdir,
                        3,
                        with_name(
                            &MkdirIn {
                                mode: 0o40755,
                                umask: 0,
                            },
                            &[b"x"],
                        ),
                    ),
                ],
            ),
        ),
    ]
}

// ---- vmm_mmio -------------------------------------------------------------------------

/// An mmio input: the device kind, then (write, size, offset, value) accesses.
fn mmio_input(kind: u8, accesses: &[(bool, usize, u16, u32)]) -> Vec<u8> {
    let mut out = vec![kind];
    for &(write, size, offset, value) in accesses {
        let size_bits = match size {
            1 => 1,
            2 => 2,
            8 => 3,
            _ => 0,
        };
        out.push(u8::from(write) | size_bits << 1);
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&value.to_le_bytes());
    }
    out
}

pub fn vmm_mmio() -> Vec<Seed> {
    let w = |offset: u16, value: u32| (true, 4, offset, value);
    let rd = |offset: u16| (false, 4, offset, 0);
    // The driver's bring-up of queue 0 (16 entries, rings in the first 64 KiB)
    // and a kick, as vmm/tests/virtio_mmio.rs does.
    let mut bring_up = vec![
        rd(0x000),
        rd(0x004),
        rd(0x008),
        rd(0x00c),
        w(0x070, 0),
        w(0x070, 1),
        w(0x070, 3),
        w(0x014, 0),
        rd(0x010),
        w(0x014, 1),
        rd(0x010),
        w(0x024, 1),
        w(0x020, 1), // VERSION_1
        w(0x024, 0),
        w(0x020, 0),
        w(0x070, 11),
        rd(0x070),
        w(0x030, 0),
        rd(0x034),
        rd(0x044),
        w(0x038, 16),
        w(0x080, 0x1000),
        w(0x084, 0),
        w(0x090, 0x2000),
        w(0x094, 0),
        w(0x0a0, 0x3000),
        w(0x0a4, 0),
        w(0x044, 1),
        w(0x070, 15),
        rd(0x070),
        w(0x050, 0),
        rd(0x060),
        w(0x064, 1),
    ];
    let config_reads = [
        (false, 8, 0x100, 0),
        (false, 4, 0x114, 0),
        (false, 2, 0x122, 0),
        (false, 1, 0x120, 0),
        (false, 1, 0x13b, 0),
    ];
    let mut blk = bring_up.clone();
    blk.extend(config_reads);
    blk.push((true, 1, 0x120, 0)); // writeback: write-through
    blk.push(w(0x070, 0));
    let mut second_queue = bring_up.clone();
    second_queue.extend([
        w(0x030, 1),
        w(0x038, 8),
        w(0x080, 0x4000),
        w(0x090, 0x5000),
        w(0x0a0, 0x6000),
        w(0x044, 1),
        w(0x050, 1),
        w(0x044, 0),
        w(0x070, 0),
    ]);
    // Refused values: queue size not a power of two, rings outside memory,
    // unaligned and odd-sized accesses, a selector out of range.
    let hostile = vec![
        w(0x070, 1),
        w(0x070, 3),
        w(0x024, 1),
        w(0x020, 1),
        w(0x070, 11),
        w(0x038, 3),
        w(0x038, 1 << 15),
        w(0x080, 0xffff_f000),
        w(0x084, 0xffff_ffff),
        w(0x044, 1),
        (true, 2, 0x070, 0xffff),
        (true, 4, 0x072, 1),
        w(0x030, 77),
        rd(0x034),
        w(0x050, 9),
        (false, 4, 0x102, 0),
        (false, 8, 0x1f8, 0),
    ];
    bring_up.extend(config_reads);
    vec![
        ("blk_bring_up_config", mmio_input(0, &blk)),
        ("blk_one_queue", mmio_input(1, &bring_up)),
        ("blk_second_queue", mmio_input(0, &second_queue)),
        ("net_bring_up_config", mmio_input(2, &bring_up)),
        ("fs_bring_up_config", mmio_input(3, &bring_up)),
        ("hostile_values", mmio_input(0, &hostile)),
    ]
}

// ---- vmm_config -----------------------------------------------------------------------

pub fn vmm_config() -> Vec<Seed> {
    let text = |s: &str| s.as_bytes().to_vec();
    vec![
        (
            "full",
            text(
                r#"kernel = "vmlinuz"
initrd = "initrd.img"
cmdline = "console=ttyS0 quiet"
cpus = 2
memory = "1G"

[[disk]]
path = "disk.img"
readonly = true
direct = false
num-queues = 2

[[disk]]
socket = "/run/blk.sock"

[[net]]
tap = "vk0"
mac = "52:54:00:12:34:56"
num-queue-pairs = 2
host-ip = "192.168.100.1/24"

[[net]]
socket = "net.sock"

[[fs]]
dir = "share"
tag = "share"
num-queues = 1

[[fs]]
socket = "/run/fs.sock"
tag = "other"
"#,
            ),
        ),
        ("minimal", text("kernel = \"vmlinuz\"\n")),
        ("memory_units", text("kernel = \"vmlinuz\"\nmemory = \"65536K\"\ncpus = 64\n")),
        (
            "ipv6_host",
            text("kernel = \"vmlinuz\"\n[[net]]\ntap = \"t\"\nhost-ip = \"fd00::1/64\"\n"),
        ),
        ("unknown_key", text("kernel = \"vmlinuz\"\n[[disk]]\npath = \"disk.img\"\nsize = 1\n")),
        ("inline_tables", text("kernel = 'vmlinuz'\ndisk = [{ path = 'disk.img' }, { socket = 's' }]\nfs = [{ dir = 'share', tag = 't' }]\n")),
    ]
}
