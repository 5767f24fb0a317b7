//! The PMI-1 text codec: one command per line, `cmd=NAME key=value key=value\n`.
//!
//! Tokens are separated by spaces; a value may contain `=` (the first `=` splits key from
//! value) but never a space, a control character or a newline. Lines longer than
//! [`MAX_LINE_LEN`] bytes are rejected, on decode and while reading.
//!
//! Not implemented: the multi-line `mcmd=spawn` form used by `PMI_Spawn_multiple`.

use std::io::{self, Read};

/// Longest line, in bytes and without its newline, that the codec accepts.
///
/// MPICH's simple PMI uses `PMIU_MAXLINE = 1024`; hydra allows larger values. 4096 leaves room
/// for a 1024-byte value plus key and kvsname with margin.
pub const MAX_LINE_LEN: usize = 4096;

/// A line that could not be decoded. Always the peer's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A token is not of the form `key=value`, or its key is empty.
    #[error("malformed token {token:?} (expected key=value)")]
    BadToken {
        /// The offending token, as text.
        token: String,
    },
    /// The line holds a control character (other than the final `\n` / `\r\n`).
    #[error("control character 0x{byte:02x} at byte {offset}")]
    ControlChar {
        /// The byte.
        byte: u8,
        /// Its offset in the line.
        offset: usize,
    },
    /// The line is empty or all spaces.
    #[error("empty line")]
    Empty,
    /// The first token is not `cmd=NAME` with a non-empty name.
    #[error("line does not start with cmd=NAME (first token {first:?})")]
    MissingCmd {
        /// The first token found.
        first: String,
    },
    /// The line is longer than [`MAX_LINE_LEN`].
    #[error("line of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// The length seen (possibly a lower bound, when reading stopped early).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The line is not UTF-8.
    #[error("line is not valid UTF-8")]
    NotUtf8,
}

/// A key or value that cannot be put on the wire. The caller's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The text holds a space, `=` (keys only), a control character or a newline, or is empty
    /// where that is not allowed.
    #[error("{what} {text:?} is not wire-safe: {reason}")]
    Invalid {
        /// What the text is (`key`, `value`, `command name`).
        what: &'static str,
        /// The text.
        text: String,
        /// Why it was refused.
        reason: &'static str,
    },
}

/// One PMI command or reply: a name and ordered `key=value` arguments.
///
/// # Examples
///
/// ```
/// use braid_pmi::Command;
///
/// let cmd = Command::new("put")?.arg("kvsname", "kvs_1")?.arg("key", "card0")?.arg("value", "a=b")?;
/// let line = cmd.encode();
/// assert_eq!(line, "cmd=put kvsname=kvs_1 key=card0 value=a=b\n");
/// assert_eq!(Command::decode(line.as_bytes())?, cmd);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The value of the leading `cmd=` token; non-empty and wire-safe.
    name: String,
    /// Arguments in wire order; keys non-empty without `=`, values wire-safe (may be empty).
    args: Vec<(String, String)>,
}

impl Command {
    /// Starts a command called `name` (the part after `cmd=`).
    ///
    /// # Errors
    ///
    /// [`WireError::Invalid`] if `name` is empty or holds a space, `=` or a control character.
    pub fn new(name: &str) -> Result<Self, WireError> {
        check_key("command name", name)?;
        Ok(Self {
            name: name.to_owned(),
            args: Vec::new(),
        })
    }

    /// Appends `key=value`.
    ///
    /// # Errors
    ///
    /// [`WireError::Invalid`] if the key is empty or holds a space, `=` or a control character,
    /// or the value holds a space or a control character (including newlines).
    pub fn arg(mut self, key: &str, value: &str) -> Result<Self, WireError> {
        check_key("key", key)?;
        check_value(value)?;
        self.args.push((key.to_owned(), value.to_owned()));
        Ok(self)
    }

    /// Builds a command from parts known to be wire-safe (literal names, numbers, or text that
    /// came out of [`Command::decode`], which cannot hold a space or control character).
    pub(crate) fn trusted(name: &'static str, args: Vec<(&'static str, String)>) -> Self {
        debug_assert!(check_key("command name", name).is_ok());
        debug_assert!(
            args.iter()
                .all(|(k, v)| check_key("key", k).is_ok() && check_value(v).is_ok())
        );
        Self {
            name: name.to_owned(),
            args: args.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        }
    }

    /// The command name (the value of `cmd=`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value of the first argument called `key`, if any.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// All arguments in wire order.
    pub fn args(&self) -> impl Iterator<Item = (&str, &str)> {
        self.args.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The wire form, newline included. Cannot fail: every part was checked when added.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 + self.args.len() * 16);
        out.push_str("cmd=");
        out.push_str(&self.name);
        for (k, v) in &self.args {
            out.push(' ');
            out.push_str(k);
            out.push('=');
            out.push_str(v);
        }
        out.push('\n');
        out
    }

    /// Decodes one line, with or without its trailing `\n` or `\r\n`.
    ///
    /// # Errors
    ///
    /// A [`DecodeError`] saying what is wrong; decoding never panics.
    pub fn decode(line: &[u8]) -> Result<Self, DecodeError> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > MAX_LINE_LEN {
            return Err(DecodeError::TooLong {
                len: line.len(),
                max: MAX_LINE_LEN,
            });
        }
        if let Some(offset) = line.iter().position(|b| b.is_ascii_control()) {
            return Err(DecodeError::ControlChar {
                byte: line[offset],
                offset,
            });
        }
        let text = std::str::from_utf8(line).map_err(|_| DecodeError::NotUtf8)?;
        let mut tokens = text.split(' ').filter(|t| !t.is_empty());
        let first = tokens.next().ok_or(DecodeError::Empty)?;
        let name = match first.split_once('=') {
            Some(("cmd", name)) if !name.is_empty() && !name.contains('=') => name,
            _ => {
                return Err(DecodeError::MissingCmd {
                    first: first.to_owned(),
                });
            }
        };
        let mut args = Vec::new();
        for token in tokens {
            match token.split_once('=') {
                Some((k, v)) if !k.is_empty() => args.push((k.to_owned(), v.to_owned())),
                _ => {
                    return Err(DecodeError::BadToken {
                        token: token.to_owned(),
                    });
                }
            }
        }
        Ok(Self {
            name: name.to_owned(),
            args,
        })
    }
}

/// Checks a command name or key: non-empty, no space, `=` or control character.
fn check_key(what: &'static str, text: &str) -> Result<(), WireError> {
    let reason = if text.is_empty() {
        "it is empty"
    } else if text.contains('=') {
        "it contains '='"
    } else if text.contains(' ') {
        "it contains a space"
    } else if text.bytes().any(|b| b.is_ascii_control()) {
        "it contains a control character or newline"
    } else if text.len() > MAX_LINE_LEN / 2 {
        "it is too long"
    } else {
        return Ok(());
    };
    Err(WireError::Invalid {
        what,
        text: text.to_owned(),
        reason,
    })
}

/// Checks a value: no space or control character (newlines included); may be empty.
fn check_value(text: &str) -> Result<(), WireError> {
    let reason = if text.contains(' ') {
        "it contains a space"
    } else if text.bytes().any(|b| b.is_ascii_control()) {
        "it contains a control character or newline"
    } else if text.len() > MAX_LINE_LEN {
        "it is too long"
    } else {
        return Ok(());
    };
    Err(WireError::Invalid {
        what: "value",
        text: text.to_owned(),
        reason,
    })
}

/// Splits a byte stream into lines of at most [`MAX_LINE_LEN`] bytes.
///
/// It can be driven two ways: [`LineReader::read_line`] blocks on the reader, or the caller
/// alternates [`LineReader::next_buffered`] and [`LineReader::fill`] so that it can adjust a
/// socket timeout between reads (the client does this to enforce per-command deadlines).
#[derive(Debug)]
pub struct LineReader {
    /// Bytes read but not yet returned; `buf[..scanned]` is known to contain no `\n`.
    buf: Vec<u8>,
    /// How much of `buf` has been searched for a newline already.
    scanned: usize,
    /// Set once the peer closed the stream; later reads return what is left, then `None`.
    eof: bool,
}

impl Default for LineReader {
    fn default() -> Self {
        Self::new()
    }
}

impl LineReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self {
            buf: Vec::with_capacity(256),
            scanned: 0,
            eof: false,
        }
    }

    /// Returns the next complete line already buffered (with its `\n`), if any.
    ///
    /// # Errors
    ///
    /// [`DecodeError::TooLong`] if more than [`MAX_LINE_LEN`] + 2 bytes arrived without a
    /// newline; the stream is then unusable.
    pub fn next_buffered(&mut self) -> Result<Option<Vec<u8>>, DecodeError> {
        if let Some(pos) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
            let end = self.scanned + pos + 1;
            let line: Vec<u8> = self.buf.drain(..end).collect();
            self.scanned = 0;
            return Ok(Some(line));
        }
        self.scanned = self.buf.len();
        if self.buf.len() > MAX_LINE_LEN + 2 {
            return Err(DecodeError::TooLong {
                len: self.buf.len(),
                max: MAX_LINE_LEN,
            });
        }
        Ok(None)
    }

    /// Whether the peer has closed the stream.
    pub fn is_eof(&self) -> bool {
        self.eof
    }

    /// Bytes buffered after the last complete line (a partial line).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Reads once from `reader` into the buffer. Returns the number of bytes read; 0 means the
    /// peer closed the stream.
    ///
    /// # Errors
    ///
    /// The reader's I/O error (`WouldBlock` / `TimedOut` on a socket timeout).
    pub fn fill<R: Read>(&mut self, reader: &mut R) -> io::Result<usize> {
        let mut chunk = [0u8; 1024];
        let n = loop {
            match reader.read(&mut chunk) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other?,
            }
        };
        if n == 0 {
            self.eof = true;
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Blocks until a full line arrives and returns it (with its `\n`), or `None` at a clean
    /// end of stream. A partial last line before end of stream is returned as is.
    ///
    /// # Errors
    ///
    /// The reader's I/O error, or `InvalidData` wrapping [`DecodeError::TooLong`].
    pub fn read_line<R: Read>(&mut self, reader: &mut R) -> io::Result<Option<Vec<u8>>> {
        loop {
            match self.next_buffered() {
                Ok(Some(line)) => return Ok(Some(line)),
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                self.scanned = 0;
                return Ok(Some(std::mem::take(&mut self.buf)));
            }
            self.fill(reader)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let cmd = Command::new("get_result")
            .unwrap()
            .arg("rc", "0")
            .unwrap()
            .arg("value", "tcp://10.77.3.4:5=x")
            .unwrap()
            .arg("empty", "")
            .unwrap();
        let line = cmd.encode();
        assert_eq!(
            line,
            "cmd=get_result rc=0 value=tcp://10.77.3.4:5=x empty=\n"
        );
        let back = Command::decode(line.as_bytes()).unwrap();
        assert_eq!(back, cmd);
        assert_eq!(back.get("value"), Some("tcp://10.77.3.4:5=x"));
        assert_eq!(back.get("empty"), Some(""));
        assert_eq!(back.get("nope"), None);
    }

    #[test]
    fn decode_tolerates_crlf_and_extra_spaces() {
        let cmd = Command::decode(b"cmd=barrier_out  rc=0 \r\n").unwrap();
        assert_eq!(cmd.name(), "barrier_out");
        assert_eq!(cmd.args().collect::<Vec<_>>(), vec![("rc", "0")]);
    }

    #[test]
    fn decode_rejects_malformed() {
        assert_eq!(Command::decode(b"\n"), Err(DecodeError::Empty));
        assert_eq!(Command::decode(b"   "), Err(DecodeError::Empty));
        assert!(matches!(
            Command::decode(b"put key=a"),
            Err(DecodeError::MissingCmd { .. })
        ));
        assert!(matches!(
            Command::decode(b"cmd= key=a"),
            Err(DecodeError::MissingCmd { .. })
        ));
        assert!(matches!(
            Command::decode(b"key=a cmd=put"),
            Err(DecodeError::MissingCmd { .. })
        ));
        assert!(matches!(
            Command::decode(b"cmd=put key"),
            Err(DecodeError::BadToken { .. })
        ));
        assert!(matches!(
            Command::decode(b"cmd=put =v"),
            Err(DecodeError::BadToken { .. })
        ));
        assert!(matches!(
            Command::decode(b"cmd=put\tkey=v"),
            Err(DecodeError::ControlChar { .. })
        ));
        assert!(matches!(
            Command::decode(b"cmd=put a=\0"),
            Err(DecodeError::ControlChar { .. })
        ));
        assert!(matches!(
            Command::decode(b"cmd=put a=b\nc=d"),
            Err(DecodeError::ControlChar { .. })
        ));
        assert_eq!(
            Command::decode(b"cmd=put k=\xff\xfe"),
            Err(DecodeError::NotUtf8)
        );
        let long = format!("cmd=put value={}", "x".repeat(MAX_LINE_LEN));
        assert!(matches!(
            Command::decode(long.as_bytes()),
            Err(DecodeError::TooLong { .. })
        ));
    }

    #[test]
    fn decode_never_panics_on_junk() {
        // A cheap deterministic fuzz: every prefix and byte flip of a few lines.
        let seeds: [&[u8]; 3] = [
            b"cmd=put kvsname=k key=a value=b\n",
            b"cmd==x =\r\n",
            b"c=\xc3\x28 d",
        ];
        for seed in seeds {
            for end in 0..=seed.len() {
                let _ = Command::decode(&seed[..end]);
                for i in 0..end {
                    for b in [0u8, b' ', b'=', b'\n', 0x80, 0xff] {
                        let mut v = seed[..end].to_vec();
                        v[i] = b;
                        let _ = Command::decode(&v);
                    }
                }
            }
        }
    }

    #[test]
    fn builder_rejects_unsafe_text() {
        assert!(Command::new("").is_err());
        assert!(Command::new("a b").is_err());
        assert!(Command::new("a=b").is_err());
        let c = Command::new("put").unwrap();
        assert!(c.clone().arg("k", "has space").is_err());
        assert!(c.clone().arg("k", "new\nline").is_err());
        assert!(c.clone().arg("k=", "v").is_err());
        assert!(c.clone().arg("", "v").is_err());
        assert!(c.arg("k", "a=b").is_ok());
    }

    #[test]
    fn line_reader_splits_and_caps() {
        let data = b"cmd=a\ncmd=b x=1\npartial";
        let mut r = LineReader::new();
        let mut src = &data[..];
        assert_eq!(r.read_line(&mut src).unwrap().unwrap(), b"cmd=a\n");
        assert_eq!(r.read_line(&mut src).unwrap().unwrap(), b"cmd=b x=1\n");
        assert_eq!(r.read_line(&mut src).unwrap().unwrap(), b"partial");
        assert_eq!(r.read_line(&mut src).unwrap(), None);

        let long = vec![b'x'; MAX_LINE_LEN + 100];
        let mut r = LineReader::new();
        let mut src = &long[..];
        let err = r.read_line(&mut src).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
