//! A minimal synchronous RESP2 client, so tests can poke a Redis server without an
//! async runtime or a Redis crate.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::error::{Result, TestkitError};

/// A Redis reply.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// `+OK`-style status.
    Status(String),
    /// `-ERR ...` error.
    Error(String),
    /// `:42`.
    Integer(i64),
    /// `$n` bulk string; `None` is the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `*n` array; `None` is the null array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text, for status and bulk replies.
    #[must_use]
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Reply::Status(s) => Some(s),
            Reply::Bulk(Some(b)) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The reply as an integer, for integer replies.
    #[must_use]
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Reply::Integer(i) => Some(*i),
            _ => None,
        }
    }
}

/// Sends one command to 127.0.0.1:`port` on a fresh connection and reads one reply.
pub(crate) fn command(port: u16, args: &[&str]) -> Result<Reply> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let action = || format!("sending {:?} to redis on port {port}", args.first());
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(TestkitError::io(action()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(TestkitError::io(action()))?;
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    stream
        .write_all(&request)
        .map_err(TestkitError::io(action()))?;
    let mut reader = BufReader::new(stream);
    read_reply(&mut reader).map_err(TestkitError::io(action()))
}

fn read_reply(reader: &mut impl BufRead) -> std::io::Result<Reply> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end_matches(['\r', '\n']);
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let (kind, rest) = line
        .split_at_checked(1)
        .ok_or_else(|| invalid("empty reply"))?;
    let number = || rest.parse::<i64>().map_err(|_| invalid("bad length"));
    Ok(match kind {
        "+" => Reply::Status(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Integer(number()?),
        "$" => match usize::try_from(number()?) {
            Err(_) => Reply::Bulk(None),
            Ok(len) => {
                let mut buf = vec![0; len + 2];
                reader.read_exact(&mut buf)?;
                buf.truncate(len);
                Reply::Bulk(Some(buf))
            }
        },
        "*" => match usize::try_from(number()?) {
            Err(_) => Reply::Array(None),
            Ok(len) => {
                let mut items = Vec::with_capacity(len.min(1024));
                for _ in 0..len {
                    items.push(read_reply(reader)?);
                }
                Reply::Array(Some(items))
            }
        },
        _ => return Err(invalid("unknown reply type")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_replies() {
        let wire = b"*3\r\n$5\r\nhello\r\n:7\r\n*-1\r\n";
        let reply = read_reply(&mut &wire[..]).unwrap();
        assert_eq!(
            reply,
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"hello".to_vec())),
                Reply::Integer(7),
                Reply::Array(None),
            ]))
        );
    }

    #[test]
    fn rejects_unknown_types() {
        assert!(read_reply(&mut &b"?x\r\n"[..]).is_err());
        assert!(read_reply(&mut &b"\r\n"[..]).is_err());
    }
}
