//! Holdfast's black-box test crate: the harness that runs the real binaries on loopback
//! ([`harness`]), and the Odoo double ([`odoo_sim`], also the `odoo-sim` binary). Scenarios live
//! in `tests/`; the `holdfast-demo` binary tells the product's story with the same harness.

pub mod harness;
pub mod netfault;
pub mod odoo_sim;
pub mod rawquic;
