output "lb_address" {
  description = "Public address of the load balancer: point MQTT clients here."
  value       = azurerm_public_ip.mqtt.ip_address
}

output "mqtt_url" {
  description = "MQTT URL of the cluster."
  value       = "mqtt://${azurerm_public_ip.mqtt.ip_address}:1883"
}

output "mqtts_url" {
  description = "MQTT over TLS URL, when tls_cert is set."
  value       = local.tls_enabled ? "mqtts://${azurerm_public_ip.mqtt.ip_address}:8883" : null
}

output "node_private_ips" {
  description = "Private addresses of the nodes (their cluster_address; the seed list)."
  value       = local.private_ips
}
