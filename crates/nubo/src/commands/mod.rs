pub mod deploy;
pub mod dlq;
pub mod init;
pub mod inspect;
pub mod invoke;
pub mod package;
pub mod top;
pub mod up;
