//! Exports: a list's whole filtered content as CSV or NDJSON, streamed from the database.
//!
//! **Content negotiation** ([`negotiate`]). A list operation answers `application/json` (its
//! page, as always), `text/csv` or `application/x-ndjson`, chosen by `Accept` with its q-values
//! (RFC 9110 §12.5.1): each offered type takes the q of the most specific range that matches it
//! (`text/csv` over `text/*` over `*/*`; media type parameters other than `q` are ignored), the
//! highest q above 0 wins and ties go to JSON, then CSV. No `Accept` (or an empty one), `*/*` and
//! `application/*` answer JSON, so every existing client is unaffected. An `Accept` that takes
//! none of the three (`application/xml`, `text/csv;q=0`) is refused with 406
//! `not-acceptable`, the detail listing the offered types; a range that does not parse is
//! ignored. Answers of these lists carry `Vary: Accept`.
//!
//! **The whole list.** An export is every item the filters select, in the JSON list's order:
//! `limit` and `cursor` belong to JSON pages and are refused with an export (400
//! `invalid-parameter`), so nobody mistakes a page for the whole.
//!
//! **Streaming.** The handler validates the query, takes one pooled connection, opens a
//! `REPEATABLE READ READ ONLY` snapshot ([`crate::ledger::snapshot`]) and reads the first chunk
//! of [`CHUNK_ROWS`] rows; a failure up to there is an ordinary problem answer. Then the answer's
//! status and headers go out and a task owning the connection pages through the list by keyset
//! ([`Source::chunk`], the JSON list's own query with its `after` key), encodes each row and sends
//! the bytes, in pieces of about [`PIECE_BYTES`], through a channel of [`PIECES_IN_FLIGHT`]
//! pieces to the streaming body, reading the next chunk while it encodes the current one: a slow
//! client slows the task down instead of filling memory, so the service holds two chunks and a
//! few pieces per export whatever the list's size. The snapshot
//! makes the export one consistent picture (no row skipped or repeated when rows change during a
//! long export); its price is that PostgreSQL keeps the row versions it may read, holding back
//! vacuum, for as long as the export runs, which a slow reader stretches (a million rows take
//! about ten seconds at full speed). Each export holds a pool connection until it ends, so
//! a process runs at most a quarter of its pool's connections as exports at once
//! ([`admit`]; `AppState::exports`): one more is a 503 `unavailable` with `Retry-After`, and
//! allocations keep the rest of the pool. A client that stops reading without disconnecting
//! would hold its connection and snapshot for ever: a piece the body has not taken within
//! [`STALL`] ends the export like a disconnection, and an export still running after
//! [`DEADLINE`] ends like a failed one (the body cut short). The snapshot's transaction sets
//! `idle_in_transaction_session_timeout` above [`STALL`] for itself, so a server-wide lower
//! setting does not cut an export whose client pauses.
//!
//! **Ends.** A client that disconnects drops the body, the task's next send fails, and the task
//! rolls the snapshot back and returns the connection. An error after the first chunk cannot
//! change the status any more: the task logs it (with the request id) and ends the body with an
//! error, so the client sees a truncated transfer (chunked encoding without its last chunk), never
//! a complete-looking file.
//!
//! **CSV** (RFC 4180): UTF-8, a header row, CRLF line ends, fields quoted only when they hold a
//! comma, quote, CR or LF (quotes doubled); written here (`push_field`, a dozen lines) rather
//! than with the `csv` crate, whose writer owns its buffer (the tests read exports back with
//! it). One column per leaf of the JSON item, named by its dotted path (`asset.adam_id`,
//! `revocation.by`), listed by the row type ([`ExportRow::COLUMNS`], a test per list checks
//! that every field has one) so the header is the same whatever the data. The cells are written
//! straight from the item's serialisation (`cells::Cells`, a serde `Serializer` following the
//! column paths), with no `serde_json::Value` per row unless the list writes an item as several
//! records ([`ExportRow::csv_records`]); an absent or null value
//! is an empty cell, numbers and booleans are written as JSON writes them, and arrays (and
//! objects with free-form keys) are one cell of compact JSON, unambiguous whatever the strings
//! hold. Spreadsheet formula injection: a text cell that starts with `=`, `+`, `-`, `@`, tab or CR
//! would run as a formula when the file is opened in a spreadsheet, and several text fields come
//! from callers (reasons, subject ids); such a cell is written with a leading `'` (OWASP's
//! advice), as is a text cell that already starts with `'`, so the rule is reversible: a
//! reader strips one leading `'` from a text cell to get the value back. Numbers are never
//! touched. NDJSON is exact.
//!
//! **NDJSON**: one JSON object per line (LF), exactly the JSON list's item.
//!
//! Wiring a list: implement [`ExportRow`] for its item (the columns), a [`Source`] that reads one
//! chunk after a key with the list's own store query, and in the handler call [`negotiate`],
//! [`refuse_paging`] and, for CSV and NDJSON, [`respond`].

use std::future::Future;

use actix_web::http::header::{self, HeaderValue};
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::problem::{ApiError, types};
use crate::db::Conn;
use crate::ledger::snapshot;

mod cells;

/// Rows read per statement of an export.
pub const CHUNK_ROWS: i64 = 5_000;
/// Bytes sent to the body at once (about).
pub const PIECE_BYTES: usize = 64 * 1024;
/// Pieces between the task and the body.
pub const PIECES_IN_FLIGHT: usize = 8;

/// The longest an export may run: a client that takes one piece just before every [`STALL`]
/// would otherwise hold its connection and snapshot (and vacuum) for hours. A million
/// assignments take about fifteen seconds at full speed.
pub const DEADLINE: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// How long a piece may wait for the client to take it before the export gives up.
pub const STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// A running export's place among the process's exports ([`admit`]), held until it ends.
pub struct Admission {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// A place for one more export, or 503 when the process runs as many as it allows.
pub fn admit(exports: &std::sync::Arc<tokio::sync::Semaphore>) -> Result<Admission, ApiError> {
    exports
        .clone()
        .try_acquire_owned()
        .map(|permit| Admission { _permit: permit })
        .map_err(|_| {
            ApiError::new(
                &types::UNAVAILABLE,
                "this server is running as many exports as it allows; retry later",
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("5"))
        })
}

/// A place for an export when `format` is one ([`admit`]); `None` for a JSON page. Taken once
/// the handler has checked the query and the space, so a refusal never hides a 400 or a 404.
pub fn admission(
    format: Format,
    exports: &std::sync::Arc<tokio::sync::Semaphore>,
) -> Result<Option<Admission>, ApiError> {
    match format {
        Format::Json => Ok(None),
        Format::Csv | Format::Ndjson => admit(exports).map(Some),
    }
}

/// The representations a list offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    Ndjson,
}

impl Format {
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv",
            Format::Ndjson => "application/x-ndjson",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8; header=present",
            Format::Ndjson => "application/x-ndjson",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
            Format::Ndjson => "ndjson",
        }
    }
}

/// In the order ties are broken.
const OFFERED: [Format; 3] = [Format::Json, Format::Csv, Format::Ndjson];

/// The representation `Accept` asks for (see the module doc); 406 when it takes none.
pub fn negotiate(req: &HttpRequest) -> Result<Format, ApiError> {
    let mut ranges = Vec::new();
    let mut any_header = false;
    for value in req.headers().get_all(header::ACCEPT) {
        let text = value.to_str().map_err(|_| {
            ApiError::new(
                &types::BAD_REQUEST,
                "the Accept header is not visible ASCII",
            )
        })?;
        if !text.trim().is_empty() {
            any_header = true;
        }
        ranges.extend(text.split(',').filter_map(MediaRange::parse));
    }
    if !any_header {
        return Ok(Format::Json);
    }
    choose(&ranges).ok_or_else(|| {
        let offered = OFFERED.map(Format::media_type).join(", ");
        ApiError::new(
            &types::NOT_ACCEPTABLE,
            format!("this list is available as {offered}; the Accept header takes none of them"),
        )
    })
}

/// The offered format with the highest q (ties: [`OFFERED`] order), if any has q > 0.
fn choose(ranges: &[MediaRange]) -> Option<Format> {
    let mut best: Option<(Format, u16)> = None;
    for format in OFFERED {
        let (kind, sub) = format
            .media_type()
            .split_once('/')
            .unwrap_or((format.media_type(), ""));
        let q = ranges
            .iter()
            .filter_map(|r| r.specificity(kind, sub).map(|s| (s, r.q)))
            .max_by_key(|(s, _)| *s)
            .map(|(_, q)| q)
            .unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((format, q));
        }
    }
    best.map(|(f, _)| f)
}

/// One media range of `Accept`, q in thousandths.
#[derive(Debug)]
struct MediaRange {
    kind: String,
    sub: String,
    q: u16,
}

impl MediaRange {
    fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split(';');
        let (kind, sub) = parts.next()?.trim().split_once('/')?;
        let (kind, sub) = (kind.trim(), sub.trim());
        if kind.is_empty() || sub.is_empty() || (kind == "*" && sub != "*") {
            return None;
        }
        let mut q = 1000;
        for param in parts {
            if let Some((name, value)) = param.split_once('=')
                && name.trim().eq_ignore_ascii_case("q")
            {
                q = parse_q(value.trim())?;
            }
        }
        Some(MediaRange {
            kind: kind.to_ascii_lowercase(),
            sub: sub.to_ascii_lowercase(),
            q,
        })
    }

    /// How specifically this range matches `kind/sub` (2 exact, 1 `kind/*`, 0 `*/*`).
    fn specificity(&self, kind: &str, sub: &str) -> Option<u8> {
        match (self.kind.as_str(), self.sub.as_str()) {
            ("*", "*") => Some(0),
            (k, "*") if k == kind => Some(1),
            (k, s) if k == kind && s == sub => Some(2),
            _ => None,
        }
    }
}

/// A qvalue (`0`, `0.5`, `1.000`) in thousandths.
fn parse_q(text: &str) -> Option<u16> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_value = format!("{frac:0<3}").parse::<u16>().ok()?;
    match int {
        "0" => Some(frac_value),
        "1" if frac_value == 0 => Some(1000),
        _ => None,
    }
}

/// 400 when an export is asked with `limit` or `cursor` (an export is the whole list).
pub fn refuse_paging(
    format: Format,
    limit: Option<u32>,
    cursor: Option<&str>,
) -> Result<(), ApiError> {
    if format == Format::Json || (limit.is_none() && cursor.is_none()) {
        return Ok(());
    }
    Err(ApiError::new(
        &types::INVALID_PARAMETER,
        format!(
            "an export ({}) is the whole filtered list: limit and cursor are for JSON pages",
            format.media_type()
        ),
    ))
}

/// A JSON list page (`Format::Json`), with `Vary: Accept`: the list also answers CSV and NDJSON,
/// so caches keep them apart.
pub fn json_page(page: impl Serialize) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::VARY, "Accept"))
        .json(page)
}

/// An item of an exported list: the JSON list's item, and its CSV columns.
pub trait ExportRow: Serialize {
    /// The CSV columns, each the dotted path of a leaf of the JSON item (see the module doc). A
    /// path may name an array or a free-form object: the cell is then its compact JSON.
    const COLUMNS: &'static [&'static str];

    /// The JSON objects this item is written as in CSV, one record each, or `None` (the
    /// default) for the item itself as its one record, whose cells are then written straight
    /// from its serialisation (`cells::Cells`) without building a [`Value`]. A list may write
    /// an item as several records (an asset per account).
    fn csv_records(&self) -> Result<Option<Vec<Value>>, serde_json::Error> {
        Ok(None)
    }
}

/// One chunk of a list: its rows, and the key to read the next chunk after (`None`: the last).
pub struct Chunk<R, K> {
    pub rows: Vec<R>,
    pub next: Option<K>,
}

impl<R, K> Chunk<R, K> {
    /// A chunk read with `limit` from `raw` rows whose last key is `last`: there may be more
    /// only when it came back full.
    pub fn new(rows: Vec<R>, raw: usize, limit: i64, last: Option<K>) -> Self {
        Chunk {
            rows,
            next: if (raw as i64) < limit { None } else { last },
        }
    }
}

/// Where an export reads its rows: the list's filters and store query.
pub trait Source: Send + Sync + 'static {
    type Row: ExportRow + Send + Sync + 'static;
    type Key: Send + 'static;

    /// At most `limit` rows after `after` (`None`: from the start), in the list's order.
    fn chunk(
        &self,
        conn: &mut Conn,
        after: Option<Self::Key>,
        limit: i64,
    ) -> impl Future<Output = Result<Chunk<Self::Row, Self::Key>, ApiError>> + Send;
}

/// The streamed answer (CSV or NDJSON) of `source`, read on `conn` (see the module doc); `name`
/// names the download (`assignments` → `assignments.csv`).
pub async fn respond<S: Source>(
    format: Format,
    admission: Admission,
    mut conn: Conn,
    source: S,
    name: &str,
) -> Result<HttpResponse, ApiError> {
    snapshot::begin(&mut conn).await?;
    let first = match source.chunk(&mut conn, None, CHUNK_ROWS).await {
        Ok(chunk) => chunk,
        Err(e) => {
            // Best effort: a connection left in the transaction is discarded by the pool.
            let _ = snapshot::end(&mut conn).await;
            return Err(e);
        }
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(PIECES_IN_FLIGHT);
    let task = async move {
        let _admission = admission;
        let outcome = run(format, &mut conn, &source, first, &tx).await;
        if snapshot::end(&mut conn).await.is_err() {
            tracing::warn!("export: closing the snapshot failed; the connection is discarded");
        }
        match outcome {
            Ok(Sent::All(rows)) => tracing::info!(rows, format = format.media_type(), "export"),
            Ok(Sent::Gone(rows)) => tracing::info!(
                rows,
                format = format.media_type(),
                "export: the client went away or stopped reading"
            ),
            Err(e) => {
                tracing::error!(error = %e, "export failed after its first rows; the body is cut short");
                let _ = tx
                    .send_timeout(
                        Err(std::io::Error::other("export failed; see the server log")),
                        STALL,
                    )
                    .await;
            }
        }
    };
    tokio::spawn(task.instrument(tracing::Span::current()));
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|piece| (piece, rx))
    });
    let disposition = format!("attachment; filename=\"{name}.{}\"", format.extension());
    let mut answer = HttpResponse::Ok();
    answer
        .insert_header((header::CONTENT_TYPE, format.content_type()))
        .insert_header((header::VARY, "Accept"));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        answer.insert_header((header::CONTENT_DISPOSITION, value));
    }
    Ok(answer.streaming(body))
}

/// How an export ended, with the rows sent.
enum Sent {
    All(u64),
    Gone(u64),
}

/// Why an export stopped early.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("reading the list: {0}")]
    Read(String),
    #[error("the export ran longer than {} minutes", DEADLINE.as_secs() / 60)]
    Deadline,
    #[error("encoding a row: {0}")]
    Encode(String),
}

async fn run<S: Source>(
    format: Format,
    conn: &mut Conn,
    source: &S,
    first: Chunk<S::Row, S::Key>,
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<Sent, Failure> {
    let mut encoder = Encoder::new(format, S::Row::COLUMNS);
    let mut chunk = first;
    let mut rows = 0u64;
    let started = std::time::Instant::now();
    loop {
        if started.elapsed() > DEADLINE {
            return Err(Failure::Deadline);
        }
        let encode = send_rows(&mut encoder, &chunk.rows, tx, &mut rows);
        let Some(after) = chunk.next.take() else {
            if !encode.await? {
                return Ok(Sent::Gone(rows));
            }
            break;
        };
        // The next chunk is read while this one is encoded and sent: PostgreSQL works on the
        // query while the encoder waits for the client or yields.
        let fetch = source.chunk(conn, Some(after), CHUNK_ROWS);
        let (fetched, present) = tokio::join!(fetch, encode);
        if !present? {
            return Ok(Sent::Gone(rows));
        }
        chunk = fetched.map_err(|e| Failure::Read(e.to_string()))?;
    }
    let rest = encoder.take();
    if !rest.is_empty() && tx.send_timeout(Ok(rest), STALL).await.is_err() {
        return Ok(Sent::Gone(rows));
    }
    Ok(Sent::All(rows))
}

/// Encodes `chunk` and sends it in pieces; `false` when the client went away.
async fn send_rows<R: ExportRow>(
    encoder: &mut Encoder,
    chunk: &[R],
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    rows: &mut u64,
) -> Result<bool, Failure> {
    for row in chunk {
        encoder.row(row)?;
        *rows += 1;
        if encoder.len() >= PIECE_BYTES {
            if tx.send_timeout(Ok(encoder.take()), STALL).await.is_err() {
                return Ok(false);
            }
            // Encoding is CPU work on the server's worker thread: let other requests (and the
            // read of the next chunk) in.
            tokio::task::yield_now().await;
        }
    }
    Ok(true)
}

/// Rows to bytes, in one format.
enum Encoder {
    Csv {
        buf: Vec<u8>,
        cells: Box<cells::Cells>,
    },
    Ndjson(Vec<u8>),
}

impl Encoder {
    fn new(format: Format, columns: &'static [&'static str]) -> Self {
        let mut buf = Vec::with_capacity(PIECE_BYTES * 2);
        match format {
            Format::Csv => {
                for (i, column) in columns.iter().enumerate() {
                    if i > 0 {
                        buf.push(b',');
                    }
                    push_field(&mut buf, column);
                }
                buf.extend_from_slice(b"\r\n");
                Encoder::Csv {
                    buf,
                    cells: Box::new(cells::Cells::new(columns)),
                }
            }
            Format::Ndjson | Format::Json => Encoder::Ndjson(buf),
        }
    }

    fn row<R: ExportRow>(&mut self, row: &R) -> Result<(), Failure> {
        match self {
            Encoder::Ndjson(buf) => {
                serde_json::to_writer(&mut *buf, row)
                    .map_err(|e| Failure::Encode(e.to_string()))?;
                buf.push(b'\n');
            }
            Encoder::Csv { buf, cells } => {
                let encode = |e: serde_json::Error| Failure::Encode(e.to_string());
                match row.csv_records().map_err(encode)? {
                    None => {
                        cells.clear();
                        row.serialize(&mut **cells).map_err(encode)?;
                        push_record(buf, cells.cells());
                    }
                    Some(records) => {
                        for record in &records {
                            for i in 0..cells.columns().len() {
                                let cell = lookup(record, &cells.columns()[i]);
                                let out = cells.cell_mut(i);
                                out.clear();
                                write_cell(out, cell);
                            }
                            push_record(buf, cells.cells());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn len(&self) -> usize {
        match self {
            Encoder::Csv { buf, .. } | Encoder::Ndjson(buf) => buf.len(),
        }
    }

    /// The bytes encoded so far.
    fn take(&mut self) -> Bytes {
        match self {
            Encoder::Csv { buf, .. } | Encoder::Ndjson(buf) => {
                Bytes::from(std::mem::replace(buf, Vec::with_capacity(PIECE_BYTES * 2)))
            }
        }
    }
}

/// One CSV record: its fields, comma-separated, and CRLF.
fn push_record(buf: &mut Vec<u8>, fields: &[String]) {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        push_field(buf, field);
    }
    buf.extend_from_slice(b"\r\n");
}

/// One RFC 4180 field: quoted (inner quotes doubled) when it holds a comma, quote, CR or LF.
fn push_field(buf: &mut Vec<u8>, field: &str) {
    if !field
        .bytes()
        .any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n'))
    {
        buf.extend_from_slice(field.as_bytes());
        return;
    }
    buf.push(b'"');
    for part in field.split_inclusive('"') {
        buf.extend_from_slice(part.as_bytes());
        if part.ends_with('"') {
            buf.push(b'"');
        }
    }
    buf.push(b'"');
}

/// The value at a dotted path of a JSON item (`None`: absent).
fn lookup<'v>(value: &'v Value, path: &[&str]) -> Option<&'v Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

/// A CSV cell for a JSON value (see the module doc: empty for absent and null, JSON for numbers,
/// booleans, arrays and objects, text with formula neutralisation).
fn write_cell(cell: &mut String, value: Option<&Value>) {
    match value {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            if needs_guard(s) {
                cell.push('\'');
            }
            cell.push_str(s);
        }
        Some(Value::Bool(b)) => cell.push_str(if *b { "true" } else { "false" }),
        Some(Value::Number(n)) => cell.push_str(&n.to_string()),
        Some(other) => cell.push_str(&other.to_string()),
    }
}

/// Whether a text cell gets a leading `'`: it would start a formula, or it starts with `'`.
pub fn needs_guard(text: &str) -> bool {
    matches!(
        text.as_bytes().first(),
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r' | b'\'')
    )
}

/// The leaf paths of a JSON item that no column covers (a column covers its path and everything
/// under it). For tests: a fully populated item must leave none, or a field would be missing
/// from the CSV.
pub fn uncovered_paths(item: &Value, columns: &[&str]) -> Vec<String> {
    fn walk(value: &Value, path: &str, columns: &[&str], out: &mut Vec<String>) {
        let covered = columns
            .iter()
            .any(|c| *c == path || path.starts_with(&format!("{c}.")));
        if covered {
            return;
        }
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (key, v) in map {
                    let child = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    walk(v, &child, columns, out);
                }
            }
            _ => out.push(path.to_owned()),
        }
    }
    let mut out = Vec::new();
    walk(item, "", columns, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(accept: &str) -> Option<Format> {
        let ranges: Vec<MediaRange> = accept.split(',').filter_map(MediaRange::parse).collect();
        choose(&ranges)
    }

    #[test]
    fn negotiation_honours_q_values_and_specificity() {
        assert_eq!(pick("*/*"), Some(Format::Json));
        assert_eq!(pick("application/*"), Some(Format::Json));
        assert_eq!(pick("text/*"), Some(Format::Csv));
        assert_eq!(pick("text/csv"), Some(Format::Csv));
        assert_eq!(pick("Text/CSV; charset=utf-8"), Some(Format::Csv));
        assert_eq!(pick("application/x-ndjson"), Some(Format::Ndjson));
        assert_eq!(pick("application/json;q=0.5, text/csv"), Some(Format::Csv));
        assert_eq!(
            pick("text/csv, application/json"),
            Some(Format::Json),
            "tie: JSON"
        );
        assert_eq!(
            pick("application/x-ndjson;q=0.9, text/csv;q=0.8, */*;q=0.1"),
            Some(Format::Ndjson)
        );
        assert_eq!(pick("*/*, application/json;q=0"), Some(Format::Csv));
        assert_eq!(pick("application/xml"), None);
        assert_eq!(pick("text/csv;q=0"), None);
        assert_eq!(
            pick("text/csv;q=2, application/xml"),
            None,
            "bad q: ignored"
        );
        assert_eq!(pick("garbage, */json"), None);
        assert_eq!(parse_q("0.125"), Some(125));
        assert_eq!(parse_q("1.000"), Some(1000));
        assert_eq!(parse_q("1.5"), None);
        assert_eq!(parse_q("0.1234"), None);
    }

    #[test]
    fn cells_flatten_quote_and_guard() {
        let item = serde_json::json!({
            "a": {"b": "x,\"y\"\nz", "n": null},
            "list": [1, "two"],
            "num": -3,
            "formula": "=HYPERLINK(\"x\")",
            "quote": "'kept",
            "t": true
        });
        let columns = [
            "a.b",
            "a.n",
            "a.missing",
            "list",
            "num",
            "formula",
            "quote",
            "t",
        ];
        let paths: Vec<Vec<&str>> = columns.iter().map(|c| c.split('.').collect()).collect();
        let cells: Vec<String> = paths
            .iter()
            .map(|p| {
                let mut cell = String::new();
                write_cell(&mut cell, lookup(&item, p));
                cell
            })
            .collect();
        assert_eq!(
            cells,
            [
                "x,\"y\"\nz",
                "",
                "",
                "[1,\"two\"]",
                "-3",
                "'=HYPERLINK(\"x\")",
                "''kept",
                "true"
            ]
        );
        assert!(uncovered_paths(&item, &columns).is_empty());
        assert_eq!(
            uncovered_paths(&item, &["a", "list"]),
            ["formula", "num", "quote", "t"]
        );
    }

    #[test]
    fn cells_from_the_serialisation_equal_cells_from_the_value() {
        #[derive(Serialize)]
        #[serde(rename_all = "snake_case")]
        enum Kind {
            Unit,
            Wrapped(u8),
            Shaped { x: i32 },
        }
        #[derive(Serialize)]
        struct Inner {
            text: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            gone: Option<u8>,
            none: Option<bool>,
            list: Vec<Kind>,
        }
        #[derive(Serialize)]
        struct Item {
            n: i64,
            f: f64,
            b: bool,
            kind: Kind,
            data: Kind,
            shape: Kind,
            inner: Inner,
            whole: Inner,
            map: std::collections::HashMap<String, u32>,
            absent: Option<Inner>,
        }
        let item = Item {
            n: -7,
            f: 1.5,
            b: true,
            kind: Kind::Unit,
            data: Kind::Wrapped(3),
            shape: Kind::Shaped { x: 2 },
            inner: Inner {
                text: "=1+1, \"q\"".into(),
                gone: None,
                none: None,
                list: vec![Kind::Unit, Kind::Wrapped(1)],
            },
            whole: Inner {
                text: "w".into(),
                gone: Some(1),
                none: Some(false),
                list: Vec::new(),
            },
            map: [("b".to_owned(), 2), ("a".to_owned(), 1)].into(),
            absent: None,
        };
        let columns: &[&str] = &[
            "n",
            "f",
            "b",
            "kind",
            "data",
            "data.wrapped",
            "shape.shaped.x",
            "inner.text",
            "inner.gone",
            "inner.none",
            "inner.list",
            "whole",
            "map",
            "map.a",
            "absent.text",
            "missing",
        ];
        let value = serde_json::to_value(&item).unwrap();
        let mut cells = cells::Cells::new(columns);
        item.serialize(&mut cells).unwrap();
        let expected: Vec<String> = cells
            .columns()
            .iter()
            .map(|p| {
                let mut cell = String::new();
                write_cell(&mut cell, lookup(&value, p));
                cell
            })
            .collect();
        assert_eq!(cells.cells(), expected);
        assert_eq!(expected[3], "unit");
        assert_eq!(expected[5], "3");
        assert_eq!(expected[7], "'=1+1, \"q\"");
    }

    #[test]
    fn fields_are_quoted_as_rfc_4180_says() {
        let mut buf = Vec::new();
        for field in ["plain", "a,b", "say \"hi\"", "two\r\nlines", "", "\""] {
            push_field(&mut buf, field);
            buf.push(b'|');
        }
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "plain|\"a,b\"|\"say \"\"hi\"\"\"|\"two\r\nlines\"||\"\"\"\"|"
        );
    }
}
