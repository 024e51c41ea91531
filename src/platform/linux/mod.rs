//! Linux side effects that need `unsafe`: kept here, every block with a `// SAFETY:` comment.

pub mod netsys;
