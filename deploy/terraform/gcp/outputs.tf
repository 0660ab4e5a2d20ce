output "lb_address" {
  description = "Address of the Network Load Balancer: point MQTT clients here."
  value       = google_compute_address.mqtt.address
}

output "mqtt_url" {
  description = "MQTT URL of the cluster."
  value       = "mqtt://${google_compute_address.mqtt.address}:1883"
}

output "mqtts_url" {
  description = "MQTT over TLS URL, when tls_cert is set."
  value       = local.tls_enabled ? "mqtts://${google_compute_address.mqtt.address}:8883" : null
}

output "node_private_ips" {
  description = "Internal addresses of the nodes (their cluster_address; the seed list)."
  value       = local.private_ips
}
