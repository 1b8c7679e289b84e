//! dmae-diffusion: not yet implemented (see the issue tracker).
