//! dmae-models: not yet implemented (see the issue tracker).
