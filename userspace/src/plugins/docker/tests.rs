use super::*;
use std::sync::Mutex;

/// Records calls; answers with fixed values.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

#[async_trait::async_trait]
impl Driver for Recorder {
    async fn request_pool(&self, r: PoolRequest) -> Result<(String, Ipv4Net)> {
        self.0.lock().unwrap().push(format!("pool {r:?}"));
        Ok(("blue".into(), "10.50.0.0/16".parse().unwrap()))
    }
    async fn release_pool(&self, id: &str) -> Result<()> {
        self.0.lock().unwrap().push(format!("release_pool {id}"));
        Ok(())
    }
    async fn request_address(&self, id: &str, w: Option<Ipv4Addr>) -> Result<(Ipv4Addr, u8)> {
        self.0.lock().unwrap().push(format!("address {id} {w:?}"));
        Ok((w.unwrap_or(Ipv4Addr::new(10, 50, 0, 2)), 16))
    }
    async fn gateway(&self, id: &str, w: Option<Ipv4Addr>) -> Result<(Ipv4Addr, u8)> {
        self.0.lock().unwrap().push(format!("gateway {id} {w:?}"));
        Ok((crate::model::local::GATEWAY, 32))
    }
    async fn release_address(&self, id: &str, a: Ipv4Addr) -> Result<()> {
        self.0.lock().unwrap().push(format!("release {id} {a}"));
        Ok(())
    }
    async fn create_network(&self, r: NetworkRequest) -> Result<()> {
        self.0.lock().unwrap().push(format!("network {r:?}"));
        Ok(())
    }
    async fn delete_network(&self, id: &str) -> Result<()> {
        self.0.lock().unwrap().push(format!("delete_network {id}"));
        Ok(())
    }
    async fn create_endpoint(
        &self,
        n: &str,
        e: &str,
        a: Ipv4Addr,
        m: Option<MacAddr>,
    ) -> Result<(MacAddr, String)> {
        self.0
            .lock()
            .unwrap()
            .push(format!("endpoint {n} {e} {a} {m:?}"));
        Ok((MacAddr([2, 0, 0, 0, 0, 7]), "oxl1p".into()))
    }
    async fn delete_endpoint(&self, n: &str, e: &str) -> Result<()> {
        self.0
            .lock()
            .unwrap()
            .push(format!("delete_endpoint {n} {e}"));
        Ok(())
    }
    async fn join(&self, n: &str, e: &str, s: &str) -> Result<(String, Ipv4Addr)> {
        self.0.lock().unwrap().push(format!("join {n} {e} {s}"));
        Ok(("oxl1p".into(), crate::model::local::GATEWAY))
    }
    async fn leave(&self, n: &str, e: &str) -> Result<()> {
        self.0.lock().unwrap().push(format!("leave {n} {e}"));
        Ok(())
    }
    async fn endpoint_info(&self, _: &str, _: &str) -> Result<Value> {
        Ok(json!({}))
    }
    async fn publish(
        &self,
        n: &str,
        e: &str,
        ports: Vec<crate::model::PublishedPort>,
    ) -> Result<()> {
        self.0
            .lock()
            .unwrap()
            .push(format!("publish {n} {e} {ports:?}"));
        Ok(())
    }
    async fn unpublish(&self, n: &str, e: &str) -> Result<()> {
        self.0.lock().unwrap().push(format!("unpublish {n} {e}"));
        Ok(())
    }
}

async fn call(d: &Recorder, method: &str, body: &str) -> Value {
    dispatch(d, method, body.as_bytes())
        .await
        .unwrap()
        .expect("known method")
}

#[tokio::test]
async fn ipam_calls_are_decoded_and_answered() {
    let d = Recorder::default();
    let v = call(&d, "Plugin.Activate", "").await;
    assert_eq!(v["Implements"], json!(["NetworkDriver", "IpamDriver"]));
    let v = call(
        &d,
        "IpamDriver.RequestPool",
        r#"{"AddressSpace":"oxlay","Pool":"10.50.0.0/16","Options":{"network":"blue"},"V6":false}"#,
    )
    .await;
    assert_eq!(v["PoolID"], "blue");
    assert_eq!(v["Pool"], "10.50.0.0/16");
    let v = call(
        &d,
        "IpamDriver.RequestAddress",
        r#"{"PoolID":"blue","Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}"#,
    )
    .await;
    assert_eq!(v["Address"], "169.254.1.1/32");
    let v = call(
        &d,
        "IpamDriver.RequestAddress",
        r#"{"PoolID":"blue","Address":"10.50.3.4"}"#,
    )
    .await;
    assert_eq!(v["Address"], "10.50.3.4/16");
    call(
        &d,
        "IpamDriver.ReleaseAddress",
        r#"{"PoolID":"blue","Address":"10.50.3.4/16"}"#,
    )
    .await;
    call(
        &d,
        "IpamDriver.ReleaseAddress",
        r#"{"PoolID":"blue","Address":"169.254.1.1/32"}"#,
    )
    .await;
    let calls = d.0.lock().unwrap().clone();
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert!(
        calls[0].contains("subnet: Some(Ipv4Net(10.50.0.0/16))")
            && calls[0].contains("\"network\": \"blue\"")
    );
    // The gateway is the pool's to say (the LAN's router on a layer-2 network).
    assert_eq!(calls[1], "gateway blue None");
    assert_eq!(calls[2], "address blue Some(10.50.3.4)");
    assert_eq!(calls[3], "release blue 10.50.3.4");
}

#[tokio::test]
async fn network_calls_carry_options_labels_and_routes() {
    let d = Recorder::default();
    call(
        &d,
        "NetworkDriver.CreateNetwork",
        r#"{"NetworkID":"n1","Options":{"com.docker.network.enable_ipv6":false,
           "com.docker.network.generic":{"team":"a","mtu":"1400"}},
           "IPv4Data":[{"AddressSpace":"oxlay","Pool":"10.50.0.0/16","Gateway":"169.254.1.1/32"}],
           "IPv6Data":[]}"#,
    )
    .await;
    let v = call(
        &d,
        "NetworkDriver.CreateEndpoint",
        r#"{"NetworkID":"n1","EndpointID":"e1","Interface":{"Address":"10.50.0.2/16","AddressIPv6":"","MacAddress":""},"Options":{}}"#,
    )
    .await;
    assert_eq!(v["Interface"]["MacAddress"], "02:00:00:00:00:07");
    let v = call(
        &d,
        "NetworkDriver.Join",
        r#"{"NetworkID":"n1","EndpointID":"e1","SandboxKey":"/var/run/docker/netns/abc","Options":{}}"#,
    )
    .await;
    assert_eq!(v["InterfaceName"]["SrcName"], "oxl1p");
    assert_eq!(v["InterfaceName"]["DstPrefix"], "eth");
    assert_eq!(v["Gateway"], "169.254.1.1");
    assert_eq!(v["StaticRoutes"][0]["Destination"], "169.254.1.1/32");
    assert_eq!(v["StaticRoutes"][0]["RouteType"], 1);
    let calls = d.0.lock().unwrap().clone();
    assert!(
        calls[0].contains("pool: Some(Ipv4Net(10.50.0.0/16))"),
        "{calls:?}"
    );
    assert!(calls[0].contains("\"team\": \"a\"") && calls[0].contains("\"mtu\": \"1400\""));
    assert!(!calls[0].contains("enable_ipv6"));
    assert_eq!(calls[1], "endpoint n1 e1 10.50.0.2 None");
    assert_eq!(calls[2], "join n1 e1 /var/run/docker/netns/abc");
    // `docker run -p 8080:80`, then the container stops.
    call(
        &d,
        "NetworkDriver.ProgramExternalConnectivity",
        r#"{"NetworkID":"n1","EndpointID":"e1","Options":{"com.docker.network.portmap":
           [{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080}]}}"#,
    )
    .await;
    call(
        &d,
        "NetworkDriver.RevokeExternalConnectivity",
        r#"{"NetworkID":"n1","EndpointID":"e1"}"#,
    )
    .await;
    let calls = d.0.lock().unwrap().clone();
    assert_eq!(
        calls[3],
        "publish n1 e1 [PublishedPort { proto: Tcp, host_ip: None, host_port: 8080, container_port: 80 }]"
    );
    assert_eq!(calls[4], "unpublish n1 e1");
}

#[tokio::test]
async fn bad_input_gets_an_error_that_says_what_to_do() {
    let d = Recorder::default();
    for (method, body, says) in [
        (
            "IpamDriver.RequestPool",
            r#"{"Pool":"10.50.0.0/33"}"#,
            "--subnet",
        ),
        ("IpamDriver.RequestPool", r#"{"V6":true}"#, "without --ipv6"),
        (
            "IpamDriver.RequestPool",
            r#"{"Pool":"10.50.0.0/16","SubPool":"10.50.1.0/33"}"#,
            "--ip-range",
        ),
        (
            "IpamDriver.RequestAddress",
            r#"{"PoolID":"blue","Address":"banana"}"#,
            "--ip",
        ),
        (
            "NetworkDriver.CreateEndpoint",
            r#"{"NetworkID":"n","EndpointID":"e"}"#,
            "--ipam-driver oxlay",
        ),
        (
            "NetworkDriver.CreateEndpoint",
            r#"{"NetworkID":"n","EndpointID":"e","Interface":{"Address":"10.1.1.1/16","MacAddress":"zz"}}"#,
            "--mac-address",
        ),
        ("NetworkDriver.Join", "{not json", "not valid"),
    ] {
        let e = dispatch(&d, method, body.as_bytes()).await.unwrap_err();
        assert!(format!("{e:#}").contains(says), "{method}: {e:#}");
    }
    assert!(dispatch(&d, "NetworkDriver.Frobnicate", b"{}")
        .await
        .unwrap()
        .is_none());
    assert!(d.0.lock().unwrap().is_empty());
}
