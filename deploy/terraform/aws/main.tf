# Starling on AWS: node_count EC2 instances across availability zones, each
# running the systemd unit of deploy/systemd (installed by cloud-init), data
# on its own EBS volume, the nodes finding each other through static seeds
# (their fixed private addresses), behind a Network Load Balancer for MQTT
# (1883, 8883) with PROXY protocol v2 and health checks on /api/v1/health.

data "aws_availability_zones" "available" {
  state = "available"
}

data "aws_ami" "debian" {
  most_recent = true
  owners      = ["136693071363"] # Debian
  filter {
    name   = "name"
    values = ["debian-12-amd64-*"]
  }
  filter {
    name   = "architecture"
    values = ["x86_64"]
  }
}

locals {
  zones        = slice(data.aws_availability_zones.available.names, 0, var.zone_count)
  tls_enabled  = var.tls_cert != ""
  admin_port   = 18083
  cluster_port = 4370
  raft_port    = 4371
  # Node i lives in zone i mod zone_count, in that zone's subnet, at the fixed
  # address .10+i: every node's seed list is known before any node boots.
  node_zone_index = [for i in range(var.node_count) : i % var.zone_count]
  private_ips     = [for i in range(var.node_count) : cidrhost(cidrsubnet(var.vpc_cidr, 8, local.node_zone_index[i]), 10 + floor(i / var.zone_count))]
  seeds           = join(",", [for ip in local.private_ips : "${ip}:${local.cluster_port}"])
  mqtt_ports      = local.tls_enabled ? [1883, 8883] : [1883]
}

# ---- network ----------------------------------------------------------------

resource "aws_vpc" "main" {
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = { Name = var.name }
}

resource "aws_internet_gateway" "main" {
  vpc_id = aws_vpc.main.id
  tags   = { Name = var.name }
}

resource "aws_subnet" "zone" {
  count                   = var.zone_count
  vpc_id                  = aws_vpc.main.id
  availability_zone       = local.zones[count.index]
  cidr_block              = cidrsubnet(var.vpc_cidr, 8, count.index)
  map_public_ip_on_launch = true # outbound for apt and the release tarball
  tags                    = { Name = "${var.name}-${local.zones[count.index]}" }
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.main.id
  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.main.id
  }
  tags = { Name = var.name }
}

resource "aws_route_table_association" "zone" {
  count          = var.zone_count
  subnet_id      = aws_subnet.zone[count.index].id
  route_table_id = aws_route_table.public.id
}

# ---- firewall -----------------------------------------------------------------

resource "aws_security_group" "node" {
  name        = "${var.name}-node"
  description = "Starling nodes: MQTT from clients, cluster ports between nodes only"
  vpc_id      = aws_vpc.main.id
  tags        = { Name = "${var.name}-node" }
}

# The NLB keeps the client's address on instance targets, so the client
# ports are open to the clients themselves.
resource "aws_vpc_security_group_ingress_rule" "mqtt" {
  for_each          = { for pair in setproduct(local.mqtt_ports, var.client_cidrs) : "${pair[0]}-${pair[1]}" => pair }
  security_group_id = aws_security_group.node.id
  description       = "MQTT clients"
  ip_protocol       = "tcp"
  from_port         = each.value[0]
  to_port           = each.value[0]
  cidr_ipv4         = each.value[1]
}

# Health checks of the NLB come from its addresses inside the VPC.
resource "aws_vpc_security_group_ingress_rule" "health" {
  security_group_id = aws_security_group.node.id
  description       = "NLB health checks on the admin API"
  ip_protocol       = "tcp"
  from_port         = local.admin_port
  to_port           = local.admin_port
  cidr_ipv4         = var.vpc_cidr
}

resource "aws_vpc_security_group_ingress_rule" "cluster" {
  for_each                     = toset([tostring(local.cluster_port), tostring(local.raft_port)])
  security_group_id            = aws_security_group.node.id
  description                  = "Starling cluster traffic between nodes only"
  ip_protocol                  = "tcp"
  from_port                    = tonumber(each.value)
  to_port                      = tonumber(each.value)
  referenced_security_group_id = aws_security_group.node.id
}

resource "aws_vpc_security_group_ingress_rule" "ssh" {
  for_each          = toset(var.ssh_cidrs)
  security_group_id = aws_security_group.node.id
  description       = "SSH"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "all" {
  security_group_id = aws_security_group.node.id
  description       = "Outbound: packages, release tarball, peers"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}

# ---- nodes --------------------------------------------------------------------

resource "aws_ebs_volume" "data" {
  count             = var.node_count
  availability_zone = local.zones[local.node_zone_index[count.index]]
  size              = var.data_disk_gb
  type              = "gp3"
  encrypted         = true
  tags              = { Name = "${var.name}-data-${count.index}" }
}

resource "aws_instance" "node" {
  count                  = var.node_count
  ami                    = data.aws_ami.debian.id
  instance_type          = var.instance_type
  subnet_id              = aws_subnet.zone[local.node_zone_index[count.index]].id
  private_ip             = local.private_ips[count.index]
  vpc_security_group_ids = [aws_security_group.node.id]
  key_name               = var.key_name != "" ? var.key_name : null

  metadata_options {
    http_tokens = "required"
  }

  root_block_device {
    volume_size = 16
    encrypted   = true
  }

  user_data_replace_on_change = false
  user_data = templatefile("${path.module}/../cloud-init.yaml.tftpl", {
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
    proxy_protocol           = var.proxy_protocol
    proxy_protocol_listeners = local.tls_enabled ? "tcp,tls" : "tcp"
    cluster_secret           = var.cluster_secret
    extra_env                = var.extra_env
    release_url              = var.starling_release_url
    # Nitro instances name an EBS volume by its id, without the dash.
    data_device = "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_${replace(aws_ebs_volume.data[count.index].id, "-", "")}"
  })

  tags = { Name = "${var.name}-${count.index}" }
}

resource "aws_volume_attachment" "data" {
  count       = var.node_count
  device_name = "/dev/sdf"
  volume_id   = aws_ebs_volume.data[count.index].id
  instance_id = aws_instance.node[count.index].id
}

# ---- load balancer --------------------------------------------------------------

resource "aws_lb" "mqtt" {
  name                             = "${var.name}-mqtt"
  load_balancer_type               = "network"
  internal                         = false
  subnets                          = aws_subnet.zone[*].id
  enable_cross_zone_load_balancing = true
}

resource "aws_lb_target_group" "mqtt" {
  for_each    = toset([for p in local.mqtt_ports : tostring(p)])
  name        = "${var.name}-${each.value}"
  port        = tonumber(each.value)
  protocol    = "TCP"
  vpc_id      = aws_vpc.main.id
  target_type = "instance"
  # The node reads the client's address from the PROXY v2 header
  # (STARLING_PROXY_PROTOCOL on the nodes is set from the same variable).
  proxy_protocol_v2 = var.proxy_protocol
  # Clients of a node taken out move quickly: connections are closed when
  # the deregistration delay ends.
  deregistration_delay   = 15
  connection_termination = true
  preserve_client_ip     = true

  health_check {
    protocol            = "HTTP"
    port                = tostring(local.admin_port)
    path                = "/api/v1/health"
    matcher             = "200"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
}

resource "aws_lb_target_group_attachment" "mqtt" {
  for_each         = { for pair in setproduct([for p in local.mqtt_ports : tostring(p)], range(var.node_count)) : "${pair[0]}-${pair[1]}" => pair }
  target_group_arn = aws_lb_target_group.mqtt[each.value[0]].arn
  target_id        = aws_instance.node[each.value[1]].id
  port             = tonumber(each.value[0])
}

resource "aws_lb_listener" "mqtt" {
  for_each          = aws_lb_target_group.mqtt
  load_balancer_arn = aws_lb.mqtt.arn
  port              = each.value.port
  protocol          = "TCP"
  default_action {
    type             = "forward"
    target_group_arn = each.value.arn
  }
}
