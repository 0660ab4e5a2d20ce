# Starling on Azure: node_count VMs across availability zones, each running the
# systemd unit of deploy/systemd (installed by cloud-init), data on its own
# managed disk, static seeds from the nodes' fixed private addresses, behind a
# Standard Load Balancer for MQTT (1883, 8883) with HTTP health probes on
# /api/v1/health.
#
# PROXY protocol: Azure's Standard Load Balancer passes packets through with
# the client's own source address, so the nodes see their clients without it
# (Azure sends PROXY v2 only through Private Link Service). So the nodes here
# do not expect a PROXY header (see docs/deploy.md).

locals {
  tls_enabled  = var.tls_cert != ""
  admin_port   = 18083
  cluster_port = 4370
  raft_port    = 4371
  subnet_cidr  = cidrsubnet(var.vnet_cidr, 8, 0)
  private_ips  = [for i in range(var.node_count) : cidrhost(local.subnet_cidr, 10 + i)]
  seeds        = join(",", [for ip in local.private_ips : "${ip}:${local.cluster_port}"])
  mqtt_ports   = local.tls_enabled ? [1883, 8883] : [1883]
}

resource "azurerm_resource_group" "main" {
  name     = var.name
  location = var.location
}

# ---- network ----------------------------------------------------------------

resource "azurerm_virtual_network" "main" {
  name                = var.name
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  address_space       = [var.vnet_cidr]
}

resource "azurerm_subnet" "nodes" {
  name                 = "${var.name}-nodes"
  resource_group_name  = azurerm_resource_group.main.name
  virtual_network_name = azurerm_virtual_network.main.name
  address_prefixes     = [local.subnet_cidr]
}

resource "azurerm_application_security_group" "nodes" {
  name                = "${var.name}-nodes"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
}

# ---- firewall -----------------------------------------------------------------

resource "azurerm_network_security_group" "nodes" {
  name                = "${var.name}-nodes"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name

  security_rule {
    name                                       = "mqtt-from-clients"
    priority                                   = 100
    direction                                  = "Inbound"
    access                                     = "Allow"
    protocol                                   = "Tcp"
    source_address_prefixes                    = var.client_cidrs
    source_port_range                          = "*"
    destination_application_security_group_ids = [azurerm_application_security_group.nodes.id]
    destination_port_ranges                    = [for p in local.mqtt_ports : tostring(p)]
  }

  security_rule {
    name                                       = "cluster-between-nodes"
    priority                                   = 110
    direction                                  = "Inbound"
    access                                     = "Allow"
    protocol                                   = "Tcp"
    source_application_security_group_ids      = [azurerm_application_security_group.nodes.id]
    source_port_range                          = "*"
    destination_application_security_group_ids = [azurerm_application_security_group.nodes.id]
    destination_port_ranges                    = [tostring(local.cluster_port), tostring(local.raft_port)]
  }

  security_rule {
    name                                       = "health-from-load-balancer"
    priority                                   = 120
    direction                                  = "Inbound"
    access                                     = "Allow"
    protocol                                   = "Tcp"
    source_address_prefix                      = "AzureLoadBalancer"
    source_port_range                          = "*"
    destination_application_security_group_ids = [azurerm_application_security_group.nodes.id]
    destination_port_range                     = tostring(local.admin_port)
  }

  dynamic "security_rule" {
    for_each = length(var.ssh_cidrs) > 0 ? [1] : []
    content {
      name                                       = "ssh"
      priority                                   = 130
      direction                                  = "Inbound"
      access                                     = "Allow"
      protocol                                   = "Tcp"
      source_address_prefixes                    = var.ssh_cidrs
      source_port_range                          = "*"
      destination_application_security_group_ids = [azurerm_application_security_group.nodes.id]
      destination_port_range                     = "22"
    }
  }

  # The default rules allow the whole virtual network in; close the cluster
  # ports to everything but the nodes (rule 110 above).
  security_rule {
    name                       = "deny-cluster-ports-otherwise"
    priority                   = 4000
    direction                  = "Inbound"
    access                     = "Deny"
    protocol                   = "*"
    source_address_prefix      = "*"
    source_port_range          = "*"
    destination_address_prefix = "*"
    destination_port_ranges    = [tostring(local.cluster_port), tostring(local.raft_port), tostring(local.admin_port)]
  }
}

resource "azurerm_subnet_network_security_group_association" "nodes" {
  subnet_id                 = azurerm_subnet.nodes.id
  network_security_group_id = azurerm_network_security_group.nodes.id
}

# ---- load balancer --------------------------------------------------------------

resource "azurerm_public_ip" "mqtt" {
  name                = "${var.name}-mqtt"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  allocation_method   = "Static"
  sku                 = "Standard"
  zones               = var.zones
}

resource "azurerm_lb" "mqtt" {
  name                = "${var.name}-mqtt"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  sku                 = "Standard"
  frontend_ip_configuration {
    name                 = "mqtt"
    public_ip_address_id = azurerm_public_ip.mqtt.id
  }
}

resource "azurerm_lb_backend_address_pool" "nodes" {
  name            = "nodes"
  loadbalancer_id = azurerm_lb.mqtt.id
}

resource "azurerm_lb_probe" "health" {
  name                = "health"
  loadbalancer_id     = azurerm_lb.mqtt.id
  protocol            = "Http"
  port                = local.admin_port
  request_path        = "/api/v1/health"
  interval_in_seconds = 10
  number_of_probes    = 2
}

resource "azurerm_lb_rule" "mqtt" {
  for_each                       = toset([for p in local.mqtt_ports : tostring(p)])
  name                           = "mqtt-${each.value}"
  loadbalancer_id                = azurerm_lb.mqtt.id
  frontend_ip_configuration_name = "mqtt"
  backend_address_pool_ids       = [azurerm_lb_backend_address_pool.nodes.id]
  probe_id                       = azurerm_lb_probe.health.id
  protocol                       = "Tcp"
  frontend_port                  = tonumber(each.value)
  backend_port                   = tonumber(each.value)
  # MQTT connections live long: the longest idle timeout, and a TCP reset
  # so that clients learn at once when it expires.
  idle_timeout_in_minutes = 30
  enable_tcp_reset        = true
  disable_outbound_snat   = true
}

# Outbound for apt and the release tarball, through the load balancer's address.
resource "azurerm_lb_outbound_rule" "nodes" {
  name                     = "outbound"
  loadbalancer_id          = azurerm_lb.mqtt.id
  protocol                 = "All"
  backend_address_pool_id  = azurerm_lb_backend_address_pool.nodes.id
  allocated_outbound_ports = 1024
  frontend_ip_configuration {
    name = "mqtt"
  }
}

# ---- nodes --------------------------------------------------------------------

resource "azurerm_network_interface" "node" {
  count               = var.node_count
  name                = "${var.name}-${count.index}"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  ip_configuration {
    name                          = "internal"
    subnet_id                     = azurerm_subnet.nodes.id
    private_ip_address_allocation = "Static"
    private_ip_address            = local.private_ips[count.index]
  }
}

resource "azurerm_network_interface_application_security_group_association" "node" {
  count                         = var.node_count
  network_interface_id          = azurerm_network_interface.node[count.index].id
  application_security_group_id = azurerm_application_security_group.nodes.id
}

resource "azurerm_network_interface_backend_address_pool_association" "node" {
  count                   = var.node_count
  network_interface_id    = azurerm_network_interface.node[count.index].id
  ip_configuration_name   = "internal"
  backend_address_pool_id = azurerm_lb_backend_address_pool.nodes.id
}

resource "azurerm_managed_disk" "data" {
  count                = var.node_count
  name                 = "${var.name}-data-${count.index}"
  location             = azurerm_resource_group.main.location
  resource_group_name  = azurerm_resource_group.main.name
  zone                 = var.zones[count.index % length(var.zones)]
  storage_account_type = "Premium_LRS"
  create_option        = "Empty"
  disk_size_gb         = var.data_disk_gb
}

resource "azurerm_linux_virtual_machine" "node" {
  count                 = var.node_count
  name                  = "${var.name}-${count.index}"
  location              = azurerm_resource_group.main.location
  resource_group_name   = azurerm_resource_group.main.name
  zone                  = var.zones[count.index % length(var.zones)]
  size                  = var.vm_size
  admin_username        = var.admin_username
  network_interface_ids = [azurerm_network_interface.node[count.index].id]

  admin_ssh_key {
    username   = var.admin_username
    public_key = var.ssh_public_key
  }

  os_disk {
    caching              = "ReadWrite"
    storage_account_type = "Premium_LRS"
  }

  source_image_reference {
    publisher = "Debian"
    offer     = "debian-12"
    sku       = "12-gen2"
    version   = "latest"
  }

  custom_data = base64encode(templatefile("${path.module}/../cloud-init.yaml.tftpl", {
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
    # LUN 0 of the data disk attachment below.
    data_device = "/dev/disk/azure/scsi1/lun0"
  }))
}

resource "azurerm_virtual_machine_data_disk_attachment" "data" {
  count              = var.node_count
  managed_disk_id    = azurerm_managed_disk.data[count.index].id
  virtual_machine_id = azurerm_linux_virtual_machine.node[count.index].id
  lun                = 0
  caching            = "None"
}
