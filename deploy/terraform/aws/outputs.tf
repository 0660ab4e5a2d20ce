output "lb_address" {
  description = "DNS name of the Network Load Balancer: point MQTT clients here."
  value       = aws_lb.mqtt.dns_name
}

output "mqtt_url" {
  description = "MQTT URL of the cluster."
  value       = "mqtt://${aws_lb.mqtt.dns_name}:1883"
}

output "mqtts_url" {
  description = "MQTT over TLS URL, when tls_cert is set."
  value       = local.tls_enabled ? "mqtts://${aws_lb.mqtt.dns_name}:8883" : null
}

output "node_private_ips" {
  description = "Private addresses of the nodes (their cluster_address; the seed list)."
  value       = local.private_ips
}

output "node_public_ips" {
  description = "Public addresses of the nodes (SSH, when ssh_cidrs allows it)."
  value       = aws_instance.node[*].public_ip
}
