//! Registry pulls, the content store (by digest), layer unpacking and
//! overlayfs root filesystems. See README.md in this folder.
