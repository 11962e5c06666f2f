//! Support for Doorstep's end-to-end tests: brokers, temporary directories, fake providers.
