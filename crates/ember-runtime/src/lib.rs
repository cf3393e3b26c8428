//! ember-runtime: a Firecracker-API client and a provider that runs microVMs in VMM processes.

pub mod client;
