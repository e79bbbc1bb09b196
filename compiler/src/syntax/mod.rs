//! The front end: the pest grammar (grammar/lamda.pest), the AST and the parser.

pub mod ast;
pub mod parse;

pub use parse::{SyntaxError, parse_file};
