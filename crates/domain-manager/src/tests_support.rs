//! What the unit tests share.

/// A temporary folder only its owner may enter, as a manager's data folder must be
/// (`tempfile::tempdir` follows the umask).
pub(crate) fn private_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .expect("a temporary folder")
}
