//! libhreg (stub)
