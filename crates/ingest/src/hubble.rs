//! Hubble Network's packet batch (`hubble-network-packet-batch.json`): checked packet by packet,
//! so a malformed packet rejects the whole batch naming its index and field, and each good packet
//! is kept exactly as Hubble sent it (unknown fields included: Hubble may add some).
//! [`parse_batch_json`] reads a pushed body straight from its bytes one packet at a time, so a
//! 16 MiB batch never exists as a whole `Value` tree beside the bytes it came from.

use base64::Engine;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Most packets Hubble puts in one batch or page.
pub const MAX_PACKETS: usize = 1000;
/// The event type every packet becomes.
pub const PACKET_EVENT: &str = "hubble.packet";
/// Key added to each packet's event data: the decoded payload's length in bytes. Dropped again
/// from `payload_format: hubble` bodies, which carry Hubble's packets unchanged.
pub const PAYLOAD_BYTES: &str = "payload_bytes";

/// One checked packet.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    /// The packet as received, plus [`PAYLOAD_BYTES`].
    pub data: Value,
    /// Hubble's identity of a packet: device id, sequence number (-1 when absent) and device
    /// timestamp (normalised text), used to drop duplicates.
    pub device_id: String,
    pub sequence_number: i64,
    pub timestamp: String,
}

impl From<Packet> for hookrelay_storage::sources::PacketRow {
    fn from(p: Packet) -> Self {
        Self {
            device_id: p.device_id,
            sequence_number: p.sequence_number,
            device_timestamp: p.timestamp,
            data: p.data,
        }
    }
}

/// A problem with one field of the batch, e.g. `packets[17].device.id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    pub field: String,
    pub message: String,
}

/// Checks a whole batch body `{"packets": [...]}`; every problem is reported, none is stored.
pub fn parse_batch(body: &Value) -> Result<Vec<Packet>, Vec<FieldProblem>> {
    let problem = |field: &str, message: &str| {
        vec![FieldProblem {
            field: field.into(),
            message: message.into(),
        }]
    };
    let Some(object) = body.as_object() else {
        return Err(problem(
            "",
            "the body must be a JSON object {\"packets\": [...]}",
        ));
    };
    let Some(packets) = object.get("packets") else {
        return Err(problem("packets", "required"));
    };
    let Some(packets) = packets.as_array() else {
        return Err(problem("packets", "must be an array of packets"));
    };
    if packets.len() > MAX_PACKETS {
        return Err(problem(
            "packets",
            &format!("at most {MAX_PACKETS} packets per batch"),
        ));
    }
    check_each(
        packets
            .iter()
            .map(|p| Ok::<_, std::convert::Infallible>(p.clone())),
    )
    .map_err(|e| match e {
        BatchError::Fields(problems) => problems,
        BatchError::Json(_) => unreachable!("no JSON is parsed here"),
    })
}

/// Why a batch body was refused: not JSON at all (a 400), or JSON that breaks Hubble's schema
/// (a 422 naming each field).
#[derive(Debug)]
pub enum BatchError {
    Json(serde_json::Error),
    Fields(Vec<FieldProblem>),
}

/// [`parse_batch`] on the body's bytes, with the same answers, holding one packet's `Value` at a
/// time beside the bytes: the body is split into borrowed packet texts, and each packet is parsed,
/// checked and moved into its [`Packet`] without a copy.
pub fn parse_batch_json(bytes: &[u8]) -> Result<Vec<Packet>, BatchError> {
    let fields = |field: &str, message: &str| {
        BatchError::Fields(vec![FieldProblem {
            field: field.into(),
            message: message.into(),
        }])
    };
    // A duplicated key keeps its last value, as `Value` does.
    let top: BTreeMap<String, &RawValue> = match serde_json::from_slice(bytes) {
        Ok(top) => top,
        // Valid JSON that is not an object; anything else is malformed.
        Err(err) if err.is_data() => {
            return match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Ok(_) => Err(fields(
                    "",
                    "the body must be a JSON object {\"packets\": [...]}",
                )),
                Err(syntax) => Err(BatchError::Json(syntax)),
            };
        }
        Err(err) => return Err(BatchError::Json(err)),
    };
    let Some(packets) = top.get("packets") else {
        return Err(fields("packets", "required"));
    };
    if !packets.get().starts_with('[') {
        return Err(fields("packets", "must be an array of packets"));
    }
    let packets: Vec<&RawValue> = serde_json::from_str(packets.get()).map_err(BatchError::Json)?;
    if packets.len() > MAX_PACKETS {
        return Err(fields(
            "packets",
            &format!("at most {MAX_PACKETS} packets per batch"),
        ));
    }
    check_each(packets.into_iter().map(|p| serde_json::from_str(p.get())))
}

/// Checks packets in order, stopping once 20 problems are found; every packet is kept only when
/// none has a problem.
fn check_each<E>(
    packets: impl ExactSizeIterator<Item = Result<Value, E>>,
) -> Result<Vec<Packet>, BatchError>
where
    BatchError: From<E>,
{
    let mut out = Vec::with_capacity(packets.len());
    let mut problems = Vec::new();
    for (i, packet) in packets.enumerate() {
        match parse_packet_owned(packet?) {
            Ok(p) if problems.is_empty() => out.push(p),
            // Already refused: a good packet after a bad one is not kept.
            Ok(_) => {}
            Err(mut found) => {
                out = Vec::new();
                for p in &mut found {
                    p.field = if p.field.is_empty() {
                        format!("packets[{i}]")
                    } else {
                        format!("packets[{i}].{}", p.field)
                    };
                }
                problems.extend(found);
            }
        }
        if problems.len() >= 20 {
            break;
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(BatchError::Fields(problems))
    }
}

impl From<std::convert::Infallible> for BatchError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

impl From<serde_json::Error> for BatchError {
    fn from(err: serde_json::Error) -> Self {
        Self::Json(err)
    }
}

/// Checks one packet against Hubble's schema.
pub fn parse_packet(packet: &Value) -> Result<Packet, Vec<FieldProblem>> {
    let checked = check_packet(packet)?;
    Ok(checked.into_packet(packet.as_object().cloned().unwrap_or_default()))
}

/// [`parse_packet`] that keeps the packet it is given instead of copying it.
pub fn parse_packet_owned(packet: Value) -> Result<Packet, Vec<FieldProblem>> {
    let checked = check_packet(&packet)?;
    match packet {
        Value::Object(object) => Ok(checked.into_packet(object)),
        _ => unreachable!("a checked packet is an object"),
    }
}

/// What checking a packet finds besides the packet itself.
struct Checked {
    device_id: String,
    sequence_number: i64,
    timestamp: String,
    payload_bytes: usize,
}

impl Checked {
    fn into_packet(self, mut data: Map<String, Value>) -> Packet {
        data.insert(PAYLOAD_BYTES.into(), Value::from(self.payload_bytes));
        Packet {
            data: Value::Object(data),
            device_id: self.device_id,
            sequence_number: self.sequence_number,
            timestamp: self.timestamp,
        }
    }
}

/// Checks a packet against Hubble's packet schema. The schema makes no field nullable: an
/// optional field may be absent, but `null` is refused for every field alike.
fn check_packet(packet: &Value) -> Result<Checked, Vec<FieldProblem>> {
    let mut problems = Vec::new();
    let mut bad = |field: &str, message: &str| {
        problems.push(FieldProblem {
            field: field.into(),
            message: message.into(),
        })
    };
    let Some(object) = packet.as_object() else {
        bad("", "must be a packet object");
        return Err(problems);
    };
    let empty = Map::new();
    let device = match object.get("device") {
        Some(Value::Object(d)) => d,
        Some(_) => {
            bad("device", "must be an object");
            &empty
        }
        None => {
            bad("device", "required");
            &empty
        }
    };
    let device_id = match device.get("id") {
        Some(Value::String(id)) if uuid::Uuid::parse_str(id).is_ok() => id.clone(),
        Some(_) => {
            bad("device.id", "must be the device's UUID");
            String::new()
        }
        None => {
            if object.get("device").is_some_and(Value::is_object) {
                bad("device.id", "required");
            }
            String::new()
        }
    };
    let payload_bytes = match device.get("payload") {
        Some(Value::String(p)) => match base64::engine::general_purpose::STANDARD.decode(p) {
            Ok(bytes) => bytes.len(),
            Err(_) => {
                bad("device.payload", "must be Base64");
                0
            }
        },
        Some(_) => {
            bad("device.payload", "must be a Base64 string");
            0
        }
        None => {
            if object.get("device").is_some_and(Value::is_object) {
                bad("device.payload", "required");
            }
            0
        }
    };
    let timestamp = match device.get("timestamp").map(Value::as_f64) {
        // `-0.0 >= 0.0` holds; `+ 0.0` turns it into 0, so it is the same packet as `0`.
        Some(Some(t)) if t.is_finite() && t >= 0.0 => format!("{}", t + 0.0),
        Some(_) => {
            bad(
                "device.timestamp",
                "must be a UTC timestamp in seconds (a number)",
            );
            String::new()
        }
        None => {
            if object.get("device").is_some_and(Value::is_object) {
                bad("device.timestamp", "required");
            }
            String::new()
        }
    };
    let sequence_number = match device.get("sequence_number") {
        None => -1,
        Some(n) => match n.as_f64() {
            Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 9.0e15 => f as i64,
            _ => {
                bad("device.sequence_number", "must be a whole number ≥ 0");
                -1
            }
        },
    };
    for field in ["rssi", "counter"] {
        if device.get(field).is_some_and(|v| !v.is_number()) {
            bad(&format!("device.{field}"), "must be a number");
        }
    }
    match device.get("name") {
        None => {}
        Some(Value::String(name)) if name.chars().count() <= 250 => {}
        Some(_) => bad("device.name", "must be a string of at most 250 characters"),
    }
    match device.get("tags") {
        None => {}
        Some(Value::Object(tags)) => {
            for (key, value) in tags {
                if !value.is_string() {
                    bad(&format!("device.tags.{key}"), "tag values must be strings");
                }
            }
        }
        Some(_) => bad("device.tags", "must be an object of strings"),
    }
    match object.get("location") {
        None => {}
        Some(Value::Object(location)) => {
            for field in ["latitude", "longitude", "altitude", "timestamp"] {
                match location.get(field) {
                    Some(v) if v.is_number() => {}
                    Some(_) => bad(&format!("location.{field}"), "must be a number"),
                    None => bad(&format!("location.{field}"), "required"),
                }
            }
            for field in ["horizontal_accuracy", "vertical_accuracy"] {
                if location.get(field).is_some_and(|v| !v.is_number()) {
                    bad(&format!("location.{field}"), "must be a number");
                }
            }
        }
        Some(_) => bad("location", "must be an object"),
    }
    match object.get("network_type") {
        None => {}
        Some(Value::String(t)) if t == "TERRESTRIAL" || t == "SATELLITE" => {}
        Some(_) => bad("network_type", "must be TERRESTRIAL or SATELLITE"),
    }
    match object.get("gateway") {
        None => {}
        Some(Value::Object(gateway)) => {
            match gateway.get("gateway_id") {
                None => {}
                Some(Value::String(id)) if uuid::Uuid::parse_str(id).is_ok() => {}
                Some(_) => bad("gateway.gateway_id", "must be the gateway's UUID"),
            }
            if gateway.get("service_id").is_some_and(|v| !v.is_string()) {
                bad("gateway.service_id", "must be a string");
            }
        }
        Some(_) => bad("gateway", "must be an object"),
    }
    if object.contains_key(PAYLOAD_BYTES) {
        bad(PAYLOAD_BYTES, "is reserved: hookrelay adds it");
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Checked {
        device_id,
        sequence_number,
        timestamp,
        payload_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn packet() -> Value {
        json!({
            "location": {"latitude": 47.6, "longitude": -122.3, "altitude": 30.0,
                         "horizontal_accuracy": 5.0, "timestamp": 1760000000.5},
            "device": {"id": "3f1c2a9e-5b7d-4e1f-9a2b-0c8d7e6f5a4b", "name": "tracker-1",
                       "tags": {"_env": "production", "location": "warehouse-a"},
                       "payload": "AQIDBA==", "rssi": -71, "timestamp": 1760000000.25,
                       "counter": 12, "sequence_number": 8},
            "network_type": "TERRESTRIAL",
            "gateway": {"gateway_id": "0a6d3c1e-2b4f-4a8e-9c7d-1e2f3a4b5c6d", "service_id": "fca6"}
        })
    }

    #[test]
    fn a_well_formed_packet_is_kept_whole_with_its_payload_length() {
        let parsed = parse_batch(&json!({"packets": [packet()]})).unwrap();
        assert_eq!(parsed.len(), 1);
        let p = &parsed[0];
        assert_eq!(p.device_id, "3f1c2a9e-5b7d-4e1f-9a2b-0c8d7e6f5a4b");
        assert_eq!(p.sequence_number, 8);
        assert_eq!(p.timestamp, "1760000000.25");
        let mut expected = packet();
        expected[PAYLOAD_BYTES] = json!(4);
        assert_eq!(p.data, expected);
        // Only the required fields.
        let minimal = json!({"device": {"id": "3f1c2a9e-5b7d-4e1f-9a2b-0c8d7e6f5a4b",
                                        "payload": "", "timestamp": 1760000000}});
        let p = parse_packet(&minimal).unwrap();
        assert_eq!(
            (p.sequence_number, p.timestamp.as_str()),
            (-1, "1760000000")
        );
    }

    #[test]
    fn a_malformed_packet_is_named_by_index_and_field() {
        let mut broken = packet();
        broken["device"]["payload"] = json!("not base64!");
        broken["device"]["sequence_number"] = json!(1.5);
        let err = parse_batch(&json!({"packets": [packet(), broken]})).unwrap_err();
        let fields: Vec<&str> = err.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "packets[1].device.payload",
                "packets[1].device.sequence_number"
            ]
        );

        for (body, field) in [
            (json!([]), ""),
            (json!({}), "packets"),
            (json!({"packets": {}}), "packets"),
            (json!({"packets": [1]}), "packets[0]"),
            (json!({"packets": [{}]}), "packets[0].device"),
            (
                json!({"packets": [{"device": {"payload": "", "timestamp": 1}}]}),
                "packets[0].device.id",
            ),
            (
                json!({"packets": [{"device": {"id": "x", "payload": "", "timestamp": 1}}]}),
                "packets[0].device.id",
            ),
            (
                json!({"packets": [{"device": {"id": "3f1c2a9e-5b7d-4e1f-9a2b-0c8d7e6f5a4b", "payload": ""}}]}),
                "packets[0].device.timestamp",
            ),
        ] {
            let err = parse_batch(&body).unwrap_err();
            assert_eq!(err[0].field, field, "{body}");
        }
        let mut wrong = packet();
        wrong["network_type"] = json!("CARRIER_PIGEON");
        wrong["location"]["latitude"] = json!("47.6");
        wrong["device"]["tags"]["floor"] = json!(3);
        let fields: Vec<String> = parse_packet(&wrong)
            .unwrap_err()
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(
            fields,
            ["device.tags.floor", "location.latitude", "network_type"]
        );
        let too_many = json!({"packets": vec![packet(); MAX_PACKETS + 1]});
        assert_eq!(parse_batch(&too_many).unwrap_err()[0].field, "packets");
    }

    #[test]
    fn null_is_refused_for_every_field_and_negative_zero_is_zero() {
        // Hubble's schema makes no field nullable: null is as wrong as any other wrong type.
        for (path, field) in [
            ("/device/name", "device.name"),
            ("/device/tags", "device.tags"),
            ("/device/rssi", "device.rssi"),
            ("/device/counter", "device.counter"),
            ("/device/sequence_number", "device.sequence_number"),
            ("/device/id", "device.id"),
            ("/device/payload", "device.payload"),
            ("/device/timestamp", "device.timestamp"),
            ("/location", "location"),
            (
                "/location/horizontal_accuracy",
                "location.horizontal_accuracy",
            ),
            ("/location/latitude", "location.latitude"),
            ("/network_type", "network_type"),
            ("/gateway", "gateway"),
            ("/gateway/gateway_id", "gateway.gateway_id"),
            ("/gateway/service_id", "gateway.service_id"),
            ("/device", "device"),
        ] {
            let mut nulled = packet();
            *nulled.pointer_mut(path).unwrap() = Value::Null;
            let fields: Vec<String> = parse_packet(&nulled)
                .unwrap_err()
                .into_iter()
                .map(|p| p.field)
                .collect();
            assert_eq!(fields, [field], "{path}");
        }
        let mut long_name = packet();
        long_name["device"]["name"] = json!("n".repeat(251));
        assert_eq!(
            parse_packet(&long_name).unwrap_err()[0].field,
            "device.name"
        );
        let mut zero = packet();
        zero["device"]["timestamp"] = json!(-0.0);
        assert_eq!(parse_packet(&zero).unwrap().timestamp, "0");
        zero["device"]["timestamp"] = json!(0);
        assert_eq!(parse_packet(&zero).unwrap().timestamp, "0");
    }

    #[test]
    fn a_body_is_read_from_its_text_as_from_its_value() {
        let body = json!({"packets": [packet(), packet()], "next": null});
        let text = serde_json::to_vec_pretty(&body).unwrap();
        let from_text = parse_batch_json(&text).unwrap();
        assert_eq!(from_text, parse_batch(&body).unwrap());
        // Whitespace anywhere, and a repeated key keeps its last value as `Value` does.
        let spaced = format!(" {{ \"packets\" : 7 , \"packets\" :\n [ {} ] }} ", packet());
        assert_eq!(parse_batch_json(spaced.as_bytes()).unwrap().len(), 1);

        let fields = |text: &str| match parse_batch_json(text.as_bytes()) {
            Err(BatchError::Fields(problems)) => {
                problems.into_iter().map(|p| p.field).collect::<Vec<_>>()
            }
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(fields("[]"), [""]);
        assert_eq!(fields("\"packets\""), [""]);
        assert_eq!(fields("{}"), ["packets"]);
        assert_eq!(fields(r#"{"packets": null}"#), ["packets"]);
        assert_eq!(fields(r#"{"packets": {"0": {}}}"#), ["packets"]);
        assert_eq!(
            fields(r#"{"packets": [{}, 1]}"#),
            ["packets[0].device", "packets[1]"]
        );
        for malformed in [
            "{\"packets\": [",
            "[1, 2",
            "{} {}",
            "{\"packets\": [1e999]}",
            "nul",
        ] {
            assert!(
                matches!(
                    parse_batch_json(malformed.as_bytes()),
                    Err(BatchError::Json(_))
                ),
                "{malformed}"
            );
        }
    }
}
