// MQTT.js (npm "mqtt", the browser MQTT client) against a WebSocket URL:
// connect, subscribe, publish a payload that spans several frames, wait for
// it to come back. Exit 0 on success, 1 with a message otherwise.
// usage: node mqttjs_roundtrip.js URL [CAFILE]
const fs = require("fs");
const mqtt = require("mqtt");

const [url, ca] = process.argv.slice(2);
const topic = "fd/mqttjs";
const payload = Buffer.alloc(70000, 7);
const fail = (why) => { console.error(why); process.exit(1); };
const timer = setTimeout(() => fail("timeout"), 25000);

const client = mqtt.connect(url, {
  protocolVersion: 4, clientId: "fd-mqttjs", reconnectPeriod: 0,
  ca: ca ? fs.readFileSync(ca) : undefined,
});
let received = false;
// Any error fails the run, also one while closing after the round trip (a
// write EPIPE there was the server ending the TLS stream before the
// client's WebSocket Close frame: test_frontdoor.py
// test_websocket_close_waits_for_the_clients_close_frame).
client.on("error", (e) => {
  fail((received ? "error after the round trip: " : "error: ") + e.message);
});
client.on("connect", () => {
  client.subscribe(topic, { qos: 1 }, (err, granted) => {
    if (err || granted[0].qos !== 1) fail("subscribe: " + (err || JSON.stringify(granted)));
    client.publish(topic, payload, { qos: 1 });
  });
});
client.on("message", (t, m) => {
  if (t !== topic || !m.equals(payload)) fail("wrong message on " + t);
  received = true;
  clearTimeout(timer);
  client.end(false, () => { console.log("ok"); process.exit(0); });
});
