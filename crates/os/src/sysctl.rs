//! Writes and reads of /proc/sys. Keys under `net/` belong to the network namespace of the
//! calling thread (the kernel resolves them per thread at open), so a thread that entered a
//! namespace sets that namespace's values.

use std::path::PathBuf;

use crate::OsError;

/// The file of `key`, written with slashes: `net/ipv4/conf/all/arp_ignore`. Slashes rather
/// than dots because interface names may contain dots (`eth0.100`).
fn path_of(key: &str) -> Result<PathBuf, OsError> {
    let why = if key.is_empty() {
        "empty"
    } else if key.starts_with('/') {
        "starts with '/' (give it relative to /proc/sys)"
    } else if key
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        "has an empty, '.' or '..' component"
    } else if key.contains('\0') {
        "contains NUL"
    } else {
        return Ok(PathBuf::from("/proc/sys").join(key));
    };
    Err(OsError::InvalidName {
        kind: "sysctl key",
        name: key.to_string(),
        why,
    })
}

/// Sets `key` to `value` (one write, as `sysctl -w` does).
pub fn write(key: &str, value: &str) -> Result<(), OsError> {
    let path = path_of(key)?;
    std::fs::write(&path, value.as_bytes()).map_err(|e| {
        OsError::io(
            format!("setting sysctl {key} = {value:?} ({})", path.display()),
            e,
        )
    })
}

/// The value of `key`, without the trailing newline.
pub fn read(key: &str) -> Result<String, OsError> {
    let path = path_of(key)?;
    let text = std::fs::read_to_string(&path)
        .map_err(|e| OsError::io(format!("reading sysctl {key} ({})", path.display()), e))?;
    Ok(text.trim_end_matches('\n').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_inside_proc_sys() {
        assert_eq!(
            path_of("net/ipv4/conf/eth0.100/arp_ignore").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/arp_ignore")
        );
        for bad in [
            "",
            "/etc/passwd",
            "net/../../etc/passwd",
            "net//ipv4",
            "net/ipv4/",
        ] {
            let err = path_of(bad).expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
