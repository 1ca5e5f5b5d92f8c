//! User-space vhost-user driver.
