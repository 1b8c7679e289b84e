//! dmae-data: not yet implemented (see the issue tracker).
