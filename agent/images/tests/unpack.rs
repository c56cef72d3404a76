//! Layer unpacking against the real filesystem (root: chown, mknod, trusted.*
//! xattrs). Tars are crafted here, including hostile ones.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use keelson_images::digest::Digest;
use keelson_images::unpack::{OPAQUE_XATTR, unpack_layer_file, unpack_tar};

/// Root, by the test kit's rule: root (chown, mknod, trusted.* xattrs).
fn root_or_skip() -> bool {
    keelson_e2e::needs(module_path!()).root().ok()
}

/// A tar entry with a raw name (no validation, so hostile names are possible).
struct E<'a> {
    name: &'a str,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    link: &'a str,
    data: &'a [u8],
}

fn e<'a>(name: &'a str, kind: tar::EntryType) -> E<'a> {
    E {
        name,
        kind,
        mode: if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        },
        uid: 0,
        gid: 0,
        link: "",
        data: b"",
    }
}

fn file<'a>(name: &'a str, data: &'a [u8]) -> E<'a> {
    E {
        data,
        ..e(name, tar::EntryType::Regular)
    }
}

fn build(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for en in entries {
        let mut h = tar::Header::new_gnu();
        {
            let raw = &mut h.as_old_mut().name;
            raw.fill(0);
            raw[..en.name.len()].copy_from_slice(en.name.as_bytes());
        }
        if !en.link.is_empty() {
            let raw = &mut h.as_old_mut().linkname;
            raw.fill(0);
            raw[..en.link.len()].copy_from_slice(en.link.as_bytes());
        }
        h.set_entry_type(en.kind);
        h.set_mode(en.mode);
        h.set_uid(en.uid);
        h.set_gid(en.gid);
        h.set_mtime(1_700_000_000);
        h.set_size(en.data.len() as u64);
        h.set_cksum();
        b.append(&h, en.data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn unpacks_modes_owners_links_and_whiteouts() {
    if !root_or_skip() {
        return;
    }
    use tar::EntryType as T;
    let tar = build(&[
        e("./", T::Directory),
        e("bin/", T::Directory),
        E {
            mode: 0o4755,
            uid: 1000,
            gid: 2000,
            ..file("bin/tool", b"#!/bin/sh\n")
        },
        E {
            link: "tool",
            ..e("bin/alias", T::Symlink)
        },
        E {
            link: "bin/tool",
            ..e("bin/hard", T::Link)
        },
        E {
            mode: 0o1777,
            ..e("tmp/", T::Directory)
        },
        file("/abs/inside.txt", b"abs"),
        file("data/.wh.gone.txt", b""),
        e("etc/app/", T::Directory),
        file("etc/app/.wh..wh..opq", b""),
        file("etc/app/new.conf", b"new"),
        E {
            mode: 0o600,
            ..e("run/fifo", T::Fifo)
        },
    ]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let diff = unpack_tar(&tar[..], d).unwrap();
    assert_eq!(
        diff,
        Digest::of(&tar),
        "diff_id is the digest of the whole tar stream"
    );

    let tool = fs::metadata(d.join("bin/tool")).unwrap();
    assert_eq!(
        tool.permissions().mode() & 0o7777,
        0o4755,
        "setuid bit kept after chown"
    );
    assert_eq!((tool.uid(), tool.gid()), (1000, 2000));
    assert_eq!(tool.mtime(), 1_700_000_000);
    assert_eq!(
        fs::read_link(d.join("bin/alias")).unwrap(),
        Path::new("tool")
    );
    let hard = fs::metadata(d.join("bin/hard")).unwrap();
    assert_eq!(hard.ino(), tool.ino(), "hard link shares the inode");
    assert_eq!(
        fs::metadata(d.join("tmp")).unwrap().permissions().mode() & 0o7777,
        0o1777
    );
    assert_eq!(fs::read(d.join("abs/inside.txt")).unwrap(), b"abs");

    let wh = fs::symlink_metadata(d.join("data/gone.txt")).unwrap();
    assert!(wh.file_type().is_char_device(), "whiteout is a char device");
    assert_eq!(wh.rdev(), 0, "whiteout is 0:0");
    assert!(
        !d.join("data/.wh.gone.txt").exists(),
        "the .wh. file itself is not kept"
    );
    assert_eq!(
        xattr::get(d.join("etc/app"), OPAQUE_XATTR)
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    assert!(!d.join("etc/app/.wh..wh..opq").exists());
    assert_eq!(fs::read(d.join("etc/app/new.conf")).unwrap(), b"new");
    assert!(
        fs::symlink_metadata(d.join("run/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

#[test]
fn refuses_paths_that_escape() {
    if !root_or_skip() {
        return;
    }
    use tar::EntryType as T;
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap().to_string();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dot-dot", build(&[file("../escaped.txt", b"x")])),
        ("inner dot-dot", build(&[file("a/../../escaped.txt", b"x")])),
        (
            "absolute symlink parent",
            build(&[
                E {
                    link: &target,
                    ..e("evil", T::Symlink)
                },
                file("evil/escaped.txt", b"x"),
            ]),
        ),
        (
            "relative symlink parent",
            build(&[
                E {
                    link: "../../../../../../../..",
                    ..e("up", T::Symlink)
                },
                file("up/escaped.txt", b"x"),
            ]),
        ),
        (
            "hard link out",
            build(&[E {
                link: "../../../../etc/passwd",
                ..e("pw", T::Link)
            }]),
        ),
        (
            "hard link through symlink",
            build(&[
                E {
                    link: &target,
                    ..e("evil", T::Symlink)
                },
                E {
                    link: "evil/secret",
                    ..e("pw", T::Link)
                },
            ]),
        ),
    ];
    fs::write(outside.path().join("secret"), b"secret").unwrap();
    for (name, tar) in cases {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("layer");
        fs::create_dir(&dest).unwrap();
        let err = unpack_tar(&tar[..], &dest).expect_err(name);
        eprintln!("{name}: {err}");
        assert!(!dir.path().join("escaped.txt").exists(), "{name}");
        assert!(!outside.path().join("escaped.txt").exists(), "{name}");
        assert!(!dest.join("pw").exists(), "{name}");
    }
}

#[test]
fn gzip_and_plain_layer_files() {
    if !root_or_skip() {
        return;
    }
    let tar = build(&[file("hello.txt", b"hello")]);
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.tar");
    fs::write(&plain, &tar).unwrap();
    let gz = dir.path().join("layer.tar.gz");
    let mut enc =
        flate2::write::GzEncoder::new(fs::File::create(&gz).unwrap(), flate2::Compression::fast());
    enc.write_all(&tar).unwrap();
    enc.finish().unwrap();
    for (blob, mt) in [
        (&plain, "application/vnd.oci.image.layer.v1.tar"),
        (&gz, "application/vnd.oci.image.layer.v1.tar+gzip"),
        (&gz, "application/vnd.docker.image.rootfs.diff.tar.gzip"),
    ] {
        let out = tempfile::tempdir().unwrap();
        let diff = unpack_layer_file(blob, mt, out.path()).unwrap();
        assert_eq!(diff, Digest::of(&tar), "{mt}");
        assert_eq!(fs::read(out.path().join("hello.txt")).unwrap(), b"hello");
    }
    // Declared gzip but plain: refused.
    let out = tempfile::tempdir().unwrap();
    assert!(
        unpack_layer_file(
            &plain,
            "application/vnd.oci.image.layer.v1.tar+gzip",
            out.path()
        )
        .is_err()
    );
    // Truncated gzip: an error, not a partial success.
    let bytes = fs::read(&gz).unwrap();
    let cut = dir.path().join("cut.tar.gz");
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = tempfile::tempdir().unwrap();
    assert!(unpack_layer_file(&cut, "", out.path()).is_err());
}

/// Found writing the `image_unpack` fuzz target (fuzz/; its seed
/// `replaced` fails on it): directory mtimes are set after every entry is
/// written, and a later entry may have replaced the directory, or one of
/// its parents, with a link out of the layer. The mtime must not land on
/// the link's target.
#[test]
fn directory_times_stay_inside_when_a_directory_becomes_a_link() {
    use std::os::unix::fs::MetadataExt;
    use tar::EntryType as T;
    let outside = tempfile::tempdir().unwrap();
    fs::create_dir(outside.path().join("e")).unwrap();
    let target = outside.path().to_str().unwrap().to_string();
    let mtimes = || {
        [outside.path().to_path_buf(), outside.path().join("e")]
            .map(|p| fs::metadata(p).unwrap().mtime())
    };
    let before = mtimes();
    let tar = build(&[
        e("d/", T::Directory),
        e("d/e/", T::Directory),
        E {
            link: &target,
            ..e("d", T::Symlink)
        },
    ]);
    let dir = tempfile::tempdir().unwrap();
    unpack_tar(&tar[..], dir.path()).unwrap();
    assert!(
        fs::symlink_metadata(dir.path().join("d"))
            .unwrap()
            .is_symlink()
    );
    assert_ne!(
        before[0], 1_700_000_000,
        "the layer's time is not the clock's"
    );
    assert_eq!(mtimes(), before, "an mtime was set through the link");
}

/// Found with the one above, reading the code the `image_unpack` fuzz
/// target drives: a directory replaced by a fifo later in the layer was
/// opened (to set its mtime) at the end, and opening a fifo without a
/// writer blocks for good: the pull never finished.
#[test]
fn a_directory_replaced_by_a_fifo_does_not_hang_the_unpack() {
    use tar::EntryType as T;
    let tar = build(&[e("d/", T::Directory), e("d", T::Fifo)]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(unpack_tar(&tar[..], &dest).map(drop)));
    let done = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("unpack finished");
    done.unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(
        fs::symlink_metadata(dir.path().join("d"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

/// Found by the `image_unpack` fuzz target (its input is
/// fuzz/corpus/image_unpack/huge-mtime): an mtime past what a `SystemTime`
/// holds (a GNU base-256 or PAX mtime can say up to 2^64 - 1 s) panicked
/// while setting it ("overflow when adding duration to instant"), taking the
/// pull down. Such entries keep the time they were written.
#[test]
fn mtimes_past_the_end_of_time_do_not_panic() {
    use tar::EntryType as T;
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, data) in [
        ("d/", T::Directory, &b""[..]),
        ("d/f", T::Regular, &b"x"[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_entry_type(kind);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(u64::MAX);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let dir = tempfile::tempdir().unwrap();
    unpack_tar(&tar[..], dir.path()).unwrap();
    assert_eq!(fs::read(dir.path().join("d/f")).unwrap(), b"x");
}
