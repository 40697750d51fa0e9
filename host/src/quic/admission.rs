//! How many connections a listener holds: in total and per client address.
//! A connection is admitted once its address is proven (after Retry, when
//! Retry is on, so a spoofed address cannot use up a real client's share)
//! and counted until its worker ends, whatever ends it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// The counts behind both caps, shared by every socket of one listener.
#[derive(Debug)]
pub(crate) struct Admission {
    max_total: usize,
    max_per_address: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Total,
    PerAddress,
}

impl Admission {
    pub(crate) fn new(max_total: usize, max_per_address: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total: max_total.max(1),
            max_per_address: max_per_address.max(1),
            counts: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a new connection from `ip`, unless a cap is reached.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refusal> {
        let ip = client_key(ip);
        let mut c = self.lock();
        if c.total >= self.max_total {
            return Err(Refusal::Total);
        }
        let n = c.per_address.entry(ip).or_default();
        if *n >= self.max_per_address {
            return Err(Refusal::PerAddress);
        }
        *n += 1;
        c.total += 1;
        Ok(Admitted {
            admission: self.clone(),
            ip,
        })
    }

    #[cfg(test)]
    fn total(&self) -> usize {
        self.lock().total
    }

    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.lock().per_address.len()
    }
}

/// Handshakes in progress from addresses Retry has not proven (Retry off).
#[derive(Debug, Default)]
pub(crate) struct Unvalidated(std::sync::atomic::AtomicUsize);

impl Unvalidated {
    pub(crate) fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts one until the returned guard drops (the handshake completed
    /// or the connection ended).
    pub(crate) fn enter(self: &Arc<Self>) -> UnvalidatedGuard {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        UnvalidatedGuard(self.clone())
    }
}

/// One handshake counted in [`Unvalidated`].
#[derive(Debug)]
pub(crate) struct UnvalidatedGuard(Arc<Unvalidated>);

impl Drop for UnvalidatedGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What "one client address" means: an IPv4 address (also when written as
/// IPv4-mapped IPv6), or an IPv6 /64 — one subscriber's usual share, every
/// address of which a client may use.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
        v4 => v4,
    }
}

/// One admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub(crate) struct Admitted {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut c = self.admission.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                // No entry outlives an address's last connection.
                c.per_address.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_caps_hold_and_every_place_comes_back() {
        let a = Admission::new(3, 2);
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        let x1 = a.admit(ip(1)).unwrap();
        let x2 = a.admit(ip(1)).unwrap();
        assert_eq!(a.admit(ip(1)).unwrap_err(), Refusal::PerAddress);
        let y1 = a.admit(ip(2)).unwrap();
        assert_eq!(a.admit(ip(3)).unwrap_err(), Refusal::Total);
        drop(x1);
        assert!(a.admit(ip(3)).is_ok(), "a place freed is taken again");
        drop((x2, y1));
        assert_eq!((a.total(), a.addresses()), (0, 0));
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        let a = Admission::new(100, 2);
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let _x = a.admit(v6("2001:db8:1:2::1")).unwrap();
        let _y = a.admit(v6("2001:db8:1:2:ffff::9")).unwrap();
        assert_eq!(
            a.admit(v6("2001:db8:1:2:abcd::1")).unwrap_err(),
            Refusal::PerAddress
        );
        assert!(a.admit(v6("2001:db8:1:3::1")).is_ok(), "another /64");
        let _m = a.admit(v6("::ffff:10.0.0.1")).unwrap();
        let _n = a.admit(v6("10.0.0.1")).unwrap();
        assert_eq!(a.admit(v6("10.0.0.1")).unwrap_err(), Refusal::PerAddress);
    }
}
