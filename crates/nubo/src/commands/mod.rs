pub mod deploy;
pub mod init;
pub mod inspect;
pub mod invoke;
pub mod up;
