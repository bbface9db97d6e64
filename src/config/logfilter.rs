//! The log-filter directive parser (`[log] level`, `RUST_LOG`). It lives in
//! `config` because config validation must refuse a bad `[log] level`
//! before anything starts, and `logging` (which installs the subscriber)
//! sits above `config`: keeping the parser here lets imports run one way.

use tracing_subscriber::filter::ParseError;
use tracing_subscriber::EnvFilter;

/// Why a filter directive was refused.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("only ASCII characters are allowed")]
    NotAscii,
    #[error(transparent)]
    Invalid(#[from] ParseError),
}

/// Parses a filter directive (`[log] level`, `RUST_LOG`) defensively; both
/// guards come from fuzzing the config parser:
/// - field-value regular expressions are off: a value such as
///   `x[{f=.......}]` made the regex compiler allocate gigabytes (field
///   values then match literally; nothing else changes);
/// - non-ASCII text is refused before the library sees it: its directive
///   parser slices strings by byte and panics inside a multi-byte
///   character. Targets, levels and field names are ASCII anyway.
pub fn parse_filter(directives: &str) -> Result<EnvFilter, FilterError> {
    if !directives.is_ascii() {
        return Err(FilterError::NotAscii);
    }
    Ok(EnvFilter::builder().with_regex(false).parse(directives)?)
}
