//! A framed request's words (command name first), and the encoding of words as a request: what
//! active mode needs to classify a request by its command and subcommand, and to send the
//! rewritten form of an update ([`crate::redis_effects`]) to every replica.

use crate::resp_value::{decode_whole_value, RespData, ValueLimits};

/// The words of one whole request as [`crate::resp::RespFramer`] cut it: an array of bulk
/// strings, or an inline command (words split at spaces and tabs, as redis-server splits a line
/// without quotes). `None` when the bytes are not one such request.
pub fn request_words(request: &[u8]) -> Option<Vec<Vec<u8>>> {
    if request.first() == Some(&b'*') {
        let limits = ValueLimits {
            max_bulk: u64::MAX,
            ..ValueLimits::default()
        };
        let value = decode_whole_value(request, limits).ok()?;
        return value
            .data
            .as_list()?
            .iter()
            .map(|word| match &word.data {
                RespData::BulkString(bytes) => Some(bytes.clone()),
                _ => None,
            })
            .collect();
    }
    let line = request
        .strip_suffix(b"\n")
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .unwrap_or(request);
    Some(
        line.split(|b| *b == b' ' || *b == b'\t')
            .filter(|word| !word.is_empty())
            .map(<[u8]>::to_vec)
            .collect(),
    )
}

/// `words` as an array of bulk strings, the form every client library sends.
pub fn encode_request(words: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", words.len()).into_bytes();
    for word in words {
        out.extend_from_slice(format!("${}\r\n", word.len()).as_bytes());
        out.extend_from_slice(word);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_and_inline_commands_give_their_words() {
        let words = |ws: &[&str]| ws.iter().map(|w| w.as_bytes().to_vec()).collect::<Vec<_>>();
        let set = encode_request(&words(&["SET", "k", "a b"]));
        assert_eq!(set, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\na b\r\n");
        assert_eq!(request_words(&set), Some(words(&["SET", "k", "a b"])));
        assert_eq!(
            request_words(b"client  setname\tx\r\n"),
            Some(words(&["client", "setname", "x"]))
        );
        assert_eq!(request_words(b"\r\n"), Some(Vec::new()));
        assert_eq!(request_words(b"*1\r\n:1\r\n"), None);
    }
}
