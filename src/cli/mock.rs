//! librdkafka's built-in mock cluster, owned by us so that its knobs the safe wrapper does not
//! expose (the group's initial rebalance delay) can be set. It serves the demo and the tests: real
//! librdkafka clients talk to it over real sockets on 127.0.0.1.

use std::ffi::{CStr, CString};

use rdkafka::bindings as rd;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::ClientConfig;

#[derive(Debug, thiserror::Error)]
pub enum MockError {
    #[error("cannot start librdkafka's mock cluster: {0}")]
    Start(String),
    #[error("mock cluster: {what} failed with librdkafka error {code}")]
    Call { what: String, code: i32 },
}

/// A running mock cluster. Dropping it stops the brokers.
pub struct MockKafka {
    ptr: *mut rd::rd_kafka_mock_cluster_t,
    bootstrap: String,
    // The mock cluster lives inside this client's handle; it must outlive `ptr`.
    _owner: BaseProducer,
}

// SAFETY: the mock cluster API posts every call to the cluster's own thread; the pointer is only
// used through those calls and destroyed once, in Drop.
unsafe impl Send for MockKafka {}
unsafe impl Sync for MockKafka {}

impl MockKafka {
    /// Starts `brokers` brokers; consumer groups rebalance at once (no 3 s initial delay).
    pub fn start(brokers: i32) -> Result<Self, MockError> {
        let owner: BaseProducer = ClientConfig::new()
            .create()
            .map_err(|e| MockError::Start(e.to_string()))?;
        // SAFETY: the client handle is valid for the lifetime of `owner`, which we keep.
        let ptr = unsafe { rd::rd_kafka_mock_cluster_new(owner.client().native_ptr(), brokers) };
        if ptr.is_null() {
            return Err(MockError::Start(
                "rd_kafka_mock_cluster_new returned null".into(),
            ));
        }
        // SAFETY: ptr is a live mock cluster; bootstraps returns a string it owns.
        let bootstrap = unsafe { CStr::from_ptr(rd::rd_kafka_mock_cluster_bootstraps(ptr)) }
            .to_string_lossy()
            .into_owned();
        unsafe { rd::rd_kafka_mock_group_initial_rebalance_delay_ms(ptr, 0) };
        Ok(Self {
            ptr,
            bootstrap,
            _owner: owner,
        })
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    fn check(what: &str, code: rd::rd_kafka_resp_err_t) -> Result<(), MockError> {
        if code as i32 == 0 {
            Ok(())
        } else {
            Err(MockError::Call {
                what: what.to_string(),
                code: code as i32,
            })
        }
    }

    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), MockError> {
        let c = CString::new(name).map_err(|e| MockError::Start(e.to_string()))?;
        // SAFETY: live cluster, NUL-terminated name.
        let code = unsafe { rd::rd_kafka_mock_topic_create(self.ptr, c.as_ptr(), partitions, 1) };
        Self::check(&format!("create topic {name}"), code)
    }

    /// Takes a broker down (connections refused) until `broker_up`.
    pub fn broker_down(&self, broker_id: i32) -> Result<(), MockError> {
        // SAFETY: live cluster.
        Self::check("broker down", unsafe {
            rd::rd_kafka_mock_broker_set_down(self.ptr, broker_id)
        })
    }

    pub fn broker_up(&self, broker_id: i32) -> Result<(), MockError> {
        // SAFETY: live cluster.
        Self::check("broker up", unsafe {
            rd::rd_kafka_mock_broker_set_up(self.ptr, broker_id)
        })
    }
}

impl Drop for MockKafka {
    fn drop(&mut self) {
        // SAFETY: created by rd_kafka_mock_cluster_new, destroyed exactly once, before `_owner`.
        unsafe { rd::rd_kafka_mock_cluster_destroy(self.ptr) };
    }
}
