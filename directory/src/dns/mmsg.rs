//! Batched UDP: every query waiting on the socket in one `recvmmsg`, and all
//! their answers in one `sendmmsg` (Linux). Elsewhere a batch is one packet,
//! with `recv_from` and `send_to`.

use std::io;
use std::net::{SocketAddr, UdpSocket};

/// Packets taken in one call. Answers go out when the whole batch is done, so a
/// batch is kept small: the first query waits for at most 15 others.
#[cfg(target_os = "linux")]
pub const BATCH: usize = 16;
#[cfg(not(target_os = "linux"))]
pub const BATCH: usize = 1;
/// The largest query read (a longer one is cut, and then refused as malformed).
pub const PACKET: usize = 4096;

/// Received packets and their senders.
pub struct Batch {
    /// How many packets the last `recv` took.
    n: usize,
    bufs: Vec<[u8; PACKET]>,
    lens: [usize; BATCH],
    from: [Option<SocketAddr>; BATCH],
    #[cfg(target_os = "linux")]
    names: Vec<libc::sockaddr_storage>,
    #[cfg(target_os = "linux")]
    namelens: [libc::socklen_t; BATCH],
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            n: 0,
            bufs: vec![[0; PACKET]; BATCH],
            lens: [0; BATCH],
            from: [None; BATCH],
            #[cfg(target_os = "linux")]
            // SAFETY: sockaddr_storage is plain data; all zeroes is a valid (empty) value.
            names: vec![unsafe { std::mem::zeroed() }; BATCH],
            #[cfg(target_os = "linux")]
            namelens: [0; BATCH],
        }
    }
}

impl Batch {
    /// Packet `i` of the last `recv` and who sent it (`None`: an address family
    /// this server does not answer).
    pub fn packet(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        debug_assert!(i < self.n, "packet {i} of a batch of {}", self.n);
        (&self.bufs[i][..self.lens[i]], self.from[i])
    }

    /// Waits for at least one packet and takes every one already waiting, up to
    /// `BATCH`; how many.
    #[cfg(target_os = "linux")]
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        // Each pointer is derived from one pointer to the whole buffer, so none
        // invalidates another.
        let bufs = self.bufs.as_mut_ptr();
        let names = self.names.as_mut_ptr();
        // SAFETY (both `add`s): i < BATCH, the length of `bufs` and of `names`.
        let mut iov: [libc::iovec; BATCH] = std::array::from_fn(|i| libc::iovec {
            iov_base: unsafe { bufs.add(i) }.cast(),
            iov_len: PACKET,
        });
        // SAFETY: mmsghdr is plain data; the fields that matter are set below.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (i, h) in hdrs.iter_mut().enumerate() {
            h.msg_hdr.msg_name = unsafe { names.add(i) }.cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
            h.msg_hdr.msg_iov = &mut iov[i];
            h.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at a live buffer and address of this batch,
        // with their true sizes, for the length of the call.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                hdrs.as_mut_ptr(),
                BATCH as _,
                libc::MSG_WAITFORONE as _,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        self.n = n;
        for (i, h) in hdrs.iter().enumerate().take(n) {
            self.lens[i] = (h.msg_len as usize).min(PACKET);
            self.namelens[i] = h.msg_hdr.msg_namelen;
            self.from[i] = socket_addr(&self.names[i], self.namelens[i]);
        }
        Ok(n)
    }

    #[cfg(not(target_os = "linux"))]
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let (n, from) = socket.recv_from(&mut self.bufs[0])?;
        self.lens[0] = n;
        self.from[0] = Some(from);
        self.n = 1;
        Ok(1)
    }

    /// Sends `outs[i]` back to the sender of packet `i`, for each `i` in `to`.
    /// An answer the kernel refuses is dropped (logged) and the rest still go.
    #[cfg(target_os = "linux")]
    pub fn send(&self, socket: &UdpSocket, to: &[usize], outs: &[Vec<u8>]) {
        use std::os::fd::AsRawFd;
        let mut iov: [libc::iovec; BATCH] = std::array::from_fn(|_| libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        });
        // SAFETY: mmsghdr is plain data; the fields that matter are set below.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        // Which packet each header answers.
        let mut dest = [0usize; BATCH];
        let mut count = 0;
        for &i in to {
            if i >= self.n || self.from[i].is_none() || count == BATCH {
                continue;
            }
            iov[count].iov_base = outs[i].as_ptr().cast_mut().cast();
            iov[count].iov_len = outs[i].len();
            let h = &mut hdrs[count].msg_hdr;
            // SAFETY: i < self.n <= BATCH; the kernel only reads the address.
            h.msg_name = unsafe { self.names.as_ptr().add(i) }.cast_mut().cast();
            h.msg_namelen = self.namelens[i];
            h.msg_iov = &mut iov[count];
            h.msg_iovlen = 1;
            dest[count] = i;
            count += 1;
        }
        let mut start = 0;
        while start < count {
            // SAFETY: headers `start..count` point at live answers and addresses
            // with their true sizes; the kernel reads those and writes only each
            // header's `msg_len`.
            let sent = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    hdrs[start..].as_mut_ptr(),
                    (count - start) as _,
                    0,
                )
            };
            if sent > 0 {
                start += sent as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            if sent < 0 && e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // The first one failed (an unreachable sender, say): skip it.
            tracing::debug!(error = %e, to = ?self.from[dest[start]], "UDP answer not sent");
            start += 1;
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn send(&self, socket: &UdpSocket, to: &[usize], outs: &[Vec<u8>]) {
        for &i in to {
            if let Some(addr) = self.from[i] {
                let _ = socket.send_to(&outs[i], addr);
            }
        }
    }
}

/// The address the kernel wrote, for IPv4 and IPv6.
#[cfg(target_os = "linux")]
fn socket_addr(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    let len = len as usize;
    match ss.ss_family as libc::c_int {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says this storage holds a sockaddr_in, and it is
            // large and aligned enough for any address type.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Packets from two senders come back with their addresses, in one batch or
    /// several, and each gets its own answer.
    fn round_trip(local: &str) {
        let Ok(server) = UdpSocket::bind(local) else {
            return; // no such address family here
        };
        let addr = server.local_addr().expect("addr");
        let a = UdpSocket::bind(local).expect("bind a");
        let b = UdpSocket::bind(local).expect("bind b");
        let mut sent = Vec::new();
        for i in 0..12u8 {
            let (s, who) = if i % 2 == 0 { (&a, 'a') } else { (&b, 'b') };
            s.send_to(&[i, who as u8], addr).expect("send");
            sent.push((vec![i, who as u8], s.local_addr().expect("addr")));
        }
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut batch = Batch::default();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < sent.len() && Instant::now() < deadline {
            let n = batch.recv(&server).expect("recv");
            let mut outs = vec![Vec::new(); BATCH];
            let mut to = Vec::new();
            for (i, out) in outs.iter_mut().enumerate().take(n) {
                let (p, from) = batch.packet(i);
                got.push((p.to_vec(), from.expect("an IP sender")));
                out.extend_from_slice(b"re:");
                out.extend_from_slice(p);
                to.push(i);
            }
            batch.send(&server, &to, &outs);
        }
        assert_eq!(got, sent);
        for (s, who) in [(&a, b'a'), (&b, b'b')] {
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut buf = [0u8; 16];
            for _ in 0..6 {
                let (n, from) = s.recv_from(&mut buf).expect("an answer");
                assert_eq!(from, addr);
                assert_eq!(&buf[..3], b"re:");
                assert_eq!((n, buf[4]), (5, who), "its own answer");
            }
        }
    }

    #[test]
    fn batches_keep_each_senders_address_v4() {
        round_trip("127.0.0.1:0");
    }

    #[test]
    fn batches_keep_each_senders_address_v6() {
        round_trip("[::1]:0");
    }
}
