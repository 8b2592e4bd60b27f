//! The plugin's errors and the CNI error codes they are reported under.

use rscni_types::{types::ErrorResult, version::SpecVersion};

/// Plugin-specific codes start at 100; the spec reserves 0–99.
pub const CODE_UNDERLAY_UNKNOWN: u32 = 100;
/// CHECK found an interface whose MTU is not the mesh MTU.
pub const CODE_MTU_MISMATCH: u32 = 101;
/// The kernel refused to read or change an interface.
pub const CODE_LINK_FAILED: u32 = 102;
/// An interface named in prevResult is not where prevResult says it is.
pub const CODE_INTERFACE_MISSING: u32 = 103;

/// Everything the CNI protocol side can fail with; each variant maps to one spec code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CniError {
    #[error("incompatible CNI version: {0}")]
    IncompatibleVersion(String),
    #[error("the container does not exist: {0}")]
    ContainerUnknown(String),
    #[error("invalid CNI environment variables: {0}")]
    InvalidEnv(String),
    #[error("I/O failure: {0}")]
    Io(String),
    #[error("cannot decode the network configuration on stdin: {0}")]
    Decode(String),
    #[error("invalid network configuration: {0}")]
    InvalidConfig(String),
    #[error("{0}")]
    TryAgainLater(String),
    #[error("{0}")]
    NotAvailable(String),
    #[error("cannot determine the underlay MTU: {0}")]
    UnderlayUnknown(String),
    #[error("{0}")]
    MtuMismatch(String),
    #[error("{0}")]
    Link(String),
    #[error("{0}")]
    InterfaceMissing(String),
}

impl CniError {
    /// The numeric code from the CNI spec (or ours, ≥ 100).
    pub fn code(&self) -> u32 {
        match self {
            Self::IncompatibleVersion(_) => 1,
            Self::ContainerUnknown(_) => 3,
            Self::InvalidEnv(_) => 4,
            Self::Io(_) => 5,
            Self::Decode(_) => 6,
            Self::InvalidConfig(_) => 7,
            Self::TryAgainLater(_) => 11,
            Self::NotAvailable(_) => 50,
            Self::UnderlayUnknown(_) => CODE_UNDERLAY_UNKNOWN,
            Self::MtuMismatch(_) => CODE_MTU_MISMATCH,
            Self::Link(_) => CODE_LINK_FAILED,
            Self::InterfaceMissing(_) => CODE_INTERFACE_MISSING,
        }
    }

    /// The error JSON the spec wants on stdout; `msg` is the whole sentence a person reads
    /// (runtimes print `msg; details`, so details only adds the plugin name).
    pub fn to_result(&self, version: SpecVersion) -> ErrorResult {
        let wire = rscni_types::error::Error::Custom(
            self.code(),
            self.to_string(),
            "wgmesh-cni".to_string(),
        );
        ErrorResult::new(version, &wire)
    }
}

impl From<rscni_types::error::Error> for CniError {
    fn from(e: rscni_types::error::Error) -> Self {
        use rscni_types::error::Error as E;
        let text = e.details().to_string();
        match e {
            E::IncompatibleVersion(_) => Self::IncompatibleVersion(text),
            E::NotExist(_) => Self::ContainerUnknown(text),
            E::InvalidEnvValue(_) => Self::InvalidEnv(text),
            E::IOFailure(_) => Self::Io(text),
            E::FailedToDecode(_) => Self::Decode(text),
            E::TryAgainLater(_) => Self::TryAgainLater(text),
            E::PluginNotAvailable(_) | E::PluginNotAvailableLimitedConnectivity(_) => {
                Self::NotAvailable(text)
            }
            E::InvalidNetworkConfig(_) | E::UnsupportedNetworkConfiguration(_) => {
                Self::InvalidConfig(text)
            }
            other => Self::InvalidConfig(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_carries_code_and_human_message() {
        let e = CniError::TryAgainLater("agent not ready".into());
        let json = serde_json::to_value(e.to_result(SpecVersion::new(1, 0, 0))).unwrap_or_default();
        assert_eq!(json["code"], 11);
        assert_eq!(json["msg"], "agent not ready");
        assert_eq!(json["cniVersion"], "1.0.0");
    }

    #[test]
    fn library_errors_keep_their_spec_code() {
        let e: CniError = rscni_types::error::Error::IncompatibleVersion("x".into()).into();
        assert_eq!(e.code(), 1);
        let e: CniError = rscni_types::error::Error::InvalidEnvValue("x".into()).into();
        assert_eq!(e.code(), 4);
        let e: CniError = rscni_types::error::Error::FailedToDecode("x".into()).into();
        assert_eq!(e.code(), 6);
        let e: CniError = rscni_types::error::Error::InvalidNetworkConfig("x".into()).into();
        assert_eq!(e.code(), 7);
    }
}
