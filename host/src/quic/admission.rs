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
}
