//! The one MySQL packet the sidecar writes itself: an error in place of the
//! server's greeting, as MariaDB refuses a connection it will not serve ("Too
//! many connections"): the client prints it as `ERROR CODE (STATE): MESSAGE`.

/// ER_OPTION_PREVENTS_STATEMENT: the error a read-only server gives a write.
pub const READ_ONLY: u16 = 1290;
/// ER_CON_COUNT_ERROR ("Too many connections"): no server can take the
/// connection now; clients and pools already retry on it.
pub const NO_SERVER: u16 = 1040;

/// The bytes of an ERR packet with sequence id 0: header (length, sequence),
/// 0xFF, the code, `#` and the SQL state, the message.
pub fn err_packet(code: u16, state: &str, message: &str) -> Vec<u8> {
    let state = if state.len() == 5 && state.is_ascii() {
        state
    } else {
        "HY000"
    };
    // A packet's payload is at most 2^24 - 1 bytes; a message is cut far below.
    let message = &message.as_bytes()[..message.len().min(4000)];
    let mut payload = Vec::with_capacity(9 + message.len());
    payload.push(0xff);
    payload.extend_from_slice(&code.to_le_bytes());
    payload.push(b'#');
    payload.extend_from_slice(state.as_bytes());
    payload.extend_from_slice(message);
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&len.to_le_bytes()[..3]);
    out.push(0);
    out.extend_from_slice(&payload);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_err_packet_is_framed() {
        let p = super::err_packet(1290, "HY000", "no");
        assert_eq!(&p[..4], &[11, 0, 0, 0]);
        assert_eq!(p[4], 0xff);
        assert_eq!(u16::from_le_bytes([p[5], p[6]]), 1290);
        assert_eq!(&p[7..13], b"#HY000");
        assert_eq!(&p[13..], b"no");
    }
}
