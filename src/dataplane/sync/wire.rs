//! The sync datagram's wire format (see [`super`] for the layout): records, control
//! messages, their encoding and the authenticated, total decoding.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::auth::Mac;
use crate::dataplane::conntrack::State;

/// Datagram magic.
pub const MAGIC: [u8; 4] = *b"CSYN";
/// Format version.
pub const VERSION: u8 = 1;
const HEADER: usize = 28;
const RECORD_V4: usize = 26;
const RECORD_V6: usize = 62;
const MAC_LEN: usize = crate::auth::TAG_LEN;
/// IPv4 records per datagram (fits a 1400-byte datagram).
pub const MAX_RECORDS: usize = 48;
/// IPv6 records per datagram (no larger than a full IPv4 one).
pub const MAX_RECORDS_V6: usize = 20;
/// Largest datagram the sender writes.
pub const MAX_DATAGRAM: usize = HEADER + MAX_RECORDS * RECORD_V4 + MAC_LEN;
/// How long a partial batch may wait before it is sent.
pub const FLUSH_AFTER_MS: u64 = 50;

/// What a [`SyncRecord`] describes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecordKind {
    /// A connection (kind-0 datagrams).
    #[default]
    Connection,
    /// A persistence (client affinity) entry: `client` (port 0) sticks to `server` for the
    /// service `vip` (with `proto`) for `remaining_ms` more; `state` is `Established` for
    /// TCP and `Udp` for UDP (kind-3 datagrams).
    Affinity,
}

/// One connection (or affinity entry, see [`RecordKind`]) as the sync stream carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncRecord {
    pub kind: RecordKind,
    pub proto: u8,
    pub state: State,
    pub client: SocketAddr,
    pub vip: SocketAddr,
    pub server: SocketAddr,
    /// Idle time left before the entry expires.
    pub remaining_ms: u32,
}

/// Why a datagram was refused. Each is counted by the receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    #[error("sync datagram shorter than header and MAC")]
    TooShort,
    #[error("not a sync datagram (bad magic)")]
    BadMagic,
    #[error("unsupported sync version {0}")]
    UnsupportedVersion(u8),
    #[error("sync datagram authentication failed")]
    BadMac,
    #[error("sync datagram from cluster {0}")]
    WrongCluster(u32),
    #[error("record count does not match the datagram length")]
    BadLength,
    #[error("malformed record {0}")]
    BadRecord(usize),
    #[error("unknown sync datagram kind {0}")]
    UnknownKind(u8),
    #[error("replayed or too old sync datagram")]
    Replay,
    #[error("output buffer too small")]
    BufferTooSmall,
}

/// The header fields of a decoded datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub cluster_id: u32,
    pub session: u64,
    pub seq: u64,
}

/// What a datagram carries (header byte 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Connection records (kind 0).
    Records,
    /// A joining ATM asks for the receiver's whole table (kind 1).
    FullSyncRequest,
    /// The sender's full sync answering the request `(session, seq)` is complete (kind 2);
    /// `count` says what it sent since the request (`None` from a sender that predates it).
    FullSyncEnd { session: u64, seq: u64, count: Option<EndCount> },
    /// Persistence (client affinity) records (kind 3): a receiver from before they existed
    /// refuses the datagram (unknown kind) and loses nothing else.
    Affinity,
}

impl Kind {
    pub(super) fn byte(self) -> u8 {
        match self {
            Kind::Records => 0,
            Kind::FullSyncRequest => 1,
            Kind::FullSyncEnd { .. } => 2,
            Kind::Affinity => 3,
        }
    }
}

/// What a full sync sent, as its end marker says: the record datagrams numbered after
/// `first` and before the end marker itself (every record datagram goes to every peer), so
/// a joiner that got fewer of them lost some and asks again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndCount {
    /// The sender's last sequence number when it took the request.
    pub first: u64,
    /// Record datagrams it sent from then until the end marker.
    pub datagrams: u64,
}

/// Body of an end marker from before [`EndCount`]: the request's session and sequence number.
const END_BODY_V0: usize = 16;
/// Body of an end marker: the request's session and sequence number, then the [`EndCount`].
const END_BODY: usize = 32;

/// A decoded, authenticated datagram; its records were all validated.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    pub header: BatchHeader,
    pub kind: Kind,
    records: &'a [u8],
    count: usize,
}

impl<'a> Batch<'a> {
    /// The records, in order.
    pub fn records(&self) -> impl Iterator<Item = SyncRecord> + 'a {
        let mut rest = self.records;
        let kind = if self.kind == Kind::Affinity { RecordKind::Affinity } else { RecordKind::Connection };
        std::iter::from_fn(move || {
            let (r, n) = read_record(rest).ok()?;
            rest = &rest[n..];
            Some(SyncRecord { kind, ..r })
        })
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Bytes of a record of `r`'s family, or `None` when its addresses are of mixed families.
fn record_len(r: &SyncRecord) -> Option<usize> {
    match (r.client.ip(), r.vip.ip(), r.server.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_), IpAddr::V4(_)) => Some(RECORD_V4),
        (IpAddr::V6(_), IpAddr::V6(_), IpAddr::V6(_)) => Some(RECORD_V6),
        _ => None,
    }
}

/// Writes `r` at the start of `b` (which has room for it); returns its length.
fn write_record(b: &mut [u8], r: &SyncRecord) -> Option<usize> {
    let len = record_len(r)?;
    let a = if len == RECORD_V4 { 4 } else { 16 };
    b[0] = if a == 4 { 4 } else { 6 };
    b[1] = r.proto;
    b[2] = r.state.to_u8();
    b[3] = 0;
    for (i, sa) in [r.client, r.vip, r.server].iter().enumerate() {
        let at = 4 + i * a;
        match sa.ip() {
            IpAddr::V4(ip) => b[at..at + 4].copy_from_slice(&ip.octets()),
            IpAddr::V6(ip) => b[at..at + 16].copy_from_slice(&ip.octets()),
        }
        let pat = 4 + 3 * a + 2 * i;
        b[pat..pat + 2].copy_from_slice(&sa.port().to_be_bytes());
    }
    let rat = 4 + 3 * a + 6;
    b[rat..rat + 4].copy_from_slice(&r.remaining_ms.to_be_bytes());
    Some(len)
}

/// The record at the start of `b` and its length.
fn read_record(b: &[u8]) -> Result<(SyncRecord, usize), ()> {
    let (a, len) = match b.first() {
        Some(4) => (4, RECORD_V4),
        Some(6) => (16, RECORD_V6),
        _ => return Err(()),
    };
    if b.len() < len || b[3] != 0 {
        return Err(());
    }
    let state = State::from_u8(b[2]).ok_or(())?;
    let addr = |i: usize| {
        let at = 4 + i * a;
        let ip = if a == 4 {
            IpAddr::V4(Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]))
        } else {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[at..at + 16]);
            IpAddr::V6(Ipv6Addr::from(o))
        };
        let pat = 4 + 3 * a + 2 * i;
        SocketAddr::new(ip, u16::from_be_bytes([b[pat], b[pat + 1]]))
    };
    let rat = 4 + 3 * a + 6;
    let rec = SyncRecord {
        kind: RecordKind::Connection,
        proto: b[1],
        state,
        client: addr(0),
        vip: addr(1),
        server: addr(2),
        remaining_ms: u32::from_be_bytes([b[rat], b[rat + 1], b[rat + 2], b[rat + 3]]),
    };
    Ok((rec, len))
}

/// Writes a datagram of the first record's kind (kind 0 for connections, 3 for affinity
/// entries); records whose addresses mix families, or of the other kind, are skipped. The
/// caller keeps to one family and kind per datagram (module docs). Returns the length.
pub fn encode(
    secret: &[u8],
    header: &BatchHeader,
    records: &[SyncRecord],
    out: &mut [u8],
) -> Result<usize, SyncError> {
    encode_with(&Mac::new(secret), header, records, out)
}

pub(super) fn encode_with(
    mac: &Mac,
    h: &BatchHeader,
    records: &[SyncRecord],
    out: &mut [u8],
) -> Result<usize, SyncError> {
    let n = records.len().min(usize::from(u16::MAX));
    let kind = records.first().map_or(RecordKind::Connection, |r| r.kind);
    let same = |r: &&SyncRecord| r.kind == kind;
    let body: usize = records[..n].iter().filter(same).filter_map(record_len).sum();
    if out.len() < HEADER + body + MAC_LEN {
        return Err(SyncError::BufferTooSmall);
    }
    let mut at = HEADER;
    let mut count: u16 = 0;
    for r in records[..n].iter().filter(same) {
        if let Some(len) = write_record(&mut out[at..], r) {
            at += len;
            count += 1;
        }
    }
    out[0..4].copy_from_slice(&MAGIC);
    out[4] = VERSION;
    out[5] = if kind == RecordKind::Affinity { Kind::Affinity.byte() } else { Kind::Records.byte() };
    out[6..8].copy_from_slice(&count.to_be_bytes());
    out[8..12].copy_from_slice(&h.cluster_id.to_be_bytes());
    out[12..20].copy_from_slice(&h.session.to_be_bytes());
    out[20..28].copy_from_slice(&h.seq.to_be_bytes());
    let tag = mac.tag(&out[..at]);
    out[at..at + MAC_LEN].copy_from_slice(&tag);
    Ok(at + MAC_LEN)
}

/// Writes a full-sync request or end marker (no records). Returns the length.
pub fn encode_control(
    secret: &[u8],
    header: &BatchHeader,
    kind: Kind,
    out: &mut [u8],
) -> Result<usize, SyncError> {
    encode_control_with(&Mac::new(secret), header, kind, out)
}

pub(super) fn encode_control_with(
    mac: &Mac,
    h: &BatchHeader,
    kind: Kind,
    out: &mut [u8],
) -> Result<usize, SyncError> {
    let body = match kind {
        Kind::Records | Kind::Affinity => return encode_with(mac, h, &[], out),
        Kind::FullSyncRequest => 0,
        Kind::FullSyncEnd { count: None, .. } => END_BODY_V0,
        Kind::FullSyncEnd { count: Some(_), .. } => END_BODY,
    };
    let at = HEADER + body;
    if out.len() < at + MAC_LEN {
        return Err(SyncError::BufferTooSmall);
    }
    out[0..4].copy_from_slice(&MAGIC);
    out[4] = VERSION;
    out[5] = kind.byte();
    out[6..8].copy_from_slice(&0u16.to_be_bytes());
    out[8..12].copy_from_slice(&h.cluster_id.to_be_bytes());
    out[12..20].copy_from_slice(&h.session.to_be_bytes());
    out[20..28].copy_from_slice(&h.seq.to_be_bytes());
    if let Kind::FullSyncEnd { session, seq, count } = kind {
        out[HEADER..HEADER + 8].copy_from_slice(&session.to_be_bytes());
        out[HEADER + 8..HEADER + 16].copy_from_slice(&seq.to_be_bytes());
        if let Some(c) = count {
            out[HEADER + 16..HEADER + 24].copy_from_slice(&c.first.to_be_bytes());
            out[HEADER + 24..HEADER + 32].copy_from_slice(&c.datagrams.to_be_bytes());
        }
    }
    let tag = mac.tag(&out[..at]);
    out[at..at + MAC_LEN].copy_from_slice(&tag);
    Ok(at + MAC_LEN)
}

/// Decodes and authenticates a datagram. Total: any bytes give `Ok` or an error.
pub fn decode<'a>(secret: &[u8], cluster_id: u32, d: &'a [u8]) -> Result<Batch<'a>, SyncError> {
    decode_with(&Mac::new(secret), cluster_id, d)
}

pub(super) fn decode_with<'a>(mac: &Mac, cluster_id: u32, d: &'a [u8]) -> Result<Batch<'a>, SyncError> {
    if d.len() < HEADER + MAC_LEN {
        return Err(SyncError::TooShort);
    }
    if d[0..4] != MAGIC {
        return Err(SyncError::BadMagic);
    }
    if d[4] != VERSION {
        return Err(SyncError::UnsupportedVersion(d[4]));
    }
    let (body, tag) = d.split_at(d.len() - MAC_LEN);
    if !mac.verify(body, tag) {
        return Err(SyncError::BadMac);
    }
    let be64 = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&body[at..at + 8]);
        u64::from_be_bytes(w)
    };
    let header = BatchHeader {
        cluster_id: u32::from_be_bytes([body[8], body[9], body[10], body[11]]),
        session: be64(12),
        seq: be64(20),
    };
    if header.cluster_id != cluster_id {
        return Err(SyncError::WrongCluster(header.cluster_id));
    }
    let count = usize::from(u16::from_be_bytes([body[6], body[7]]));
    let records = &body[HEADER..];
    let kind = match body[5] {
        0 => Kind::Records,
        3 => Kind::Affinity,
        1 => Kind::FullSyncRequest,
        2 if records.len() == END_BODY_V0 || records.len() == END_BODY => Kind::FullSyncEnd {
            session: be64(HEADER),
            seq: be64(HEADER + 8),
            count: (records.len() == END_BODY)
                .then(|| EndCount { first: be64(HEADER + 16), datagrams: be64(HEADER + 24) }),
        },
        2 => return Err(SyncError::BadLength),
        k => return Err(SyncError::UnknownKind(k)),
    };
    if !matches!(kind, Kind::Records | Kind::Affinity) {
        if count != 0 || (kind == Kind::FullSyncRequest && !records.is_empty()) {
            return Err(SyncError::BadLength);
        }
        return Ok(Batch { header, kind, records: &[], count: 0 });
    }
    let mut at = 0;
    let mut family = None;
    for i in 0..count {
        if at >= records.len() {
            return Err(SyncError::BadLength);
        }
        let (r, n) = read_record(&records[at..]).map_err(|()| SyncError::BadRecord(i))?;
        // One family per datagram (module docs).
        if *family.get_or_insert(r.vip.is_ipv4()) != r.vip.is_ipv4() {
            return Err(SyncError::BadRecord(i));
        }
        at += n;
    }
    if at != records.len() {
        return Err(SyncError::BadLength);
    }
    Ok(Batch { header, kind, records, count })
}
