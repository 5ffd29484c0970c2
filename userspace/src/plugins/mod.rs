//! How container runtimes reach oxlay: Docker's network and IPAM driver plugin (served
//! by the daemon) and the CNI plugin (the `oxlay` binary run by containerd, CRI-O or
//! Kubernetes).
pub mod cni;
pub mod docker;
