# Starling on GCP: node_count VMs across zones, each running the systemd unit
# of deploy/systemd (installed by cloud-init), data on its own persistent
# disk, static seeds from the nodes' fixed internal addresses, behind an
# external passthrough Network Load Balancer for MQTT (1883, 8883) with HTTP
# health checks on /api/v1/health.
#
# PROXY protocol: GCP's passthrough load balancer does not rewrite the
# source address, so every node sees its clients' own addresses without it;
# GCP's proxy load balancers only speak PROXY v1. So the nodes here do not
# expect a PROXY header (see docs/deploy.md).

locals {
  tls_enabled  = var.tls_cert != ""
  admin_port   = 18083
  cluster_port = 4370
  raft_port    = 4371
  private_ips  = [for i in range(var.node_count) : cidrhost(var.subnet_cidr, 10 + i)]
  seeds        = join(",", [for ip in local.private_ips : "${ip}:${local.cluster_port}"])
  mqtt_ports   = local.tls_enabled ? ["1883", "8883"] : ["1883"]
  node_tag     = "${var.name}-node"
  # Google's health checkers (and the passthrough load balancer's probes).
  health_check_ranges = ["35.191.0.0/16", "130.211.0.0/22", "209.85.152.0/22", "209.85.204.0/22"]
}

# ---- network ----------------------------------------------------------------

resource "google_compute_network" "main" {
  name                    = var.name
  auto_create_subnetworks = false
}

resource "google_compute_subnetwork" "nodes" {
  name          = "${var.name}-nodes"
  network       = google_compute_network.main.id
  region        = var.region
  ip_cidr_range = var.subnet_cidr
}

# Outbound for apt and the release tarball, without public addresses.
resource "google_compute_router" "main" {
  name    = var.name
  network = google_compute_network.main.id
  region  = var.region
}

resource "google_compute_router_nat" "main" {
  name                               = var.name
  router                             = google_compute_router.main.name
  region                             = var.region
  nat_ip_allocate_option             = "AUTO_ONLY"
  source_subnetwork_ip_ranges_to_nat = "ALL_SUBNETWORKS_ALL_IP_RANGES"
}

# ---- firewall -----------------------------------------------------------------

resource "google_compute_firewall" "mqtt" {
  name          = "${var.name}-mqtt"
  network       = google_compute_network.main.id
  direction     = "INGRESS"
  source_ranges = var.client_cidrs
  target_tags   = [local.node_tag]
  allow {
    protocol = "tcp"
    ports    = local.mqtt_ports
  }
}

resource "google_compute_firewall" "cluster" {
  name        = "${var.name}-cluster"
  network     = google_compute_network.main.id
  direction   = "INGRESS"
  source_tags = [local.node_tag]
  target_tags = [local.node_tag]
  allow {
    protocol = "tcp"
    ports    = [tostring(local.cluster_port), tostring(local.raft_port)]
  }
}

resource "google_compute_firewall" "health" {
  name          = "${var.name}-health"
  network       = google_compute_network.main.id
  direction     = "INGRESS"
  source_ranges = local.health_check_ranges
  target_tags   = [local.node_tag]
  allow {
    protocol = "tcp"
    ports    = [tostring(local.admin_port)]
  }
}

resource "google_compute_firewall" "ssh" {
  count         = length(var.ssh_cidrs) > 0 ? 1 : 0
  name          = "${var.name}-ssh"
  network       = google_compute_network.main.id
  direction     = "INGRESS"
  source_ranges = var.ssh_cidrs
  target_tags   = [local.node_tag]
  allow {
    protocol = "tcp"
    ports    = ["22"]
  }
}

# ---- nodes --------------------------------------------------------------------

resource "google_compute_disk" "data" {
  count = var.node_count
  name  = "${var.name}-data-${count.index}"
  zone  = var.zones[count.index % length(var.zones)]
  type  = "pd-balanced"
  size  = var.data_disk_gb
}

resource "google_compute_instance" "node" {
  count        = var.node_count
  name         = "${var.name}-${count.index}"
  zone         = var.zones[count.index % length(var.zones)]
  machine_type = var.machine_type
  tags         = [local.node_tag]

  boot_disk {
    initialize_params {
      image = "debian-cloud/debian-12"
      size  = 20
    }
  }

  attached_disk {
    source      = google_compute_disk.data[count.index].id
    device_name = "starling-data"
  }

  network_interface {
    subnetwork = google_compute_subnetwork.nodes.id
    network_ip = local.private_ips[count.index]
  }

  metadata = {
    user-data = templatefile("${path.module}/../cloud-init.yaml.tftpl", {
      unit                     = file("${path.module}/../../systemd/starling.service")
      node_name                = "${var.name}-${count.index}"
      private_ip               = local.private_ips[count.index]
      seeds                    = local.seeds
      cluster_port             = local.cluster_port
      raft_port                = local.raft_port
      admin_port               = local.admin_port
      tls_enabled              = local.tls_enabled
      tls_cert                 = var.tls_cert
      tls_key                  = var.tls_key
      proxy_protocol           = false
      proxy_protocol_listeners = ""
      cluster_secret           = var.cluster_secret
      extra_env                = var.extra_env
      release_url              = var.starling_release_url
      data_device              = "/dev/disk/by-id/google-starling-data"
    })
  }

  shielded_instance_config {
    enable_secure_boot = true
  }
}

resource "google_compute_instance_group" "zone" {
  count     = length(var.zones)
  name      = "${var.name}-${var.zones[count.index]}"
  zone      = var.zones[count.index]
  instances = [for i, n in google_compute_instance.node : n.self_link if i % length(var.zones) == count.index]
}

# ---- load balancer --------------------------------------------------------------

resource "google_compute_region_health_check" "health" {
  name                = "${var.name}-health"
  region              = var.region
  check_interval_sec  = 10
  timeout_sec         = 5
  healthy_threshold   = 2
  unhealthy_threshold = 2
  http_health_check {
    port         = local.admin_port
    request_path = "/api/v1/health"
  }
}

resource "google_compute_region_backend_service" "mqtt" {
  name                  = "${var.name}-mqtt"
  region                = var.region
  protocol              = "TCP"
  load_balancing_scheme = "EXTERNAL"
  health_checks         = [google_compute_region_health_check.health.id]
  # Clients of a node that fails its health check are moved off it.
  connection_draining_timeout_sec = 15
  dynamic "backend" {
    for_each = google_compute_instance_group.zone
    content {
      group          = backend.value.self_link
      balancing_mode = "CONNECTION"
    }
  }
}

resource "google_compute_address" "mqtt" {
  name   = "${var.name}-mqtt"
  region = var.region
}

resource "google_compute_forwarding_rule" "mqtt" {
  name                  = "${var.name}-mqtt"
  region                = var.region
  ip_address            = google_compute_address.mqtt.address
  ip_protocol           = "TCP"
  ports                 = local.mqtt_ports
  load_balancing_scheme = "EXTERNAL"
  backend_service       = google_compute_region_backend_service.mqtt.id
}
