variable "region" {
  description = "AWS region."
  type        = string
  default     = "eu-west-1"
}

variable "name" {
  description = "Prefix of every resource name."
  type        = string
  default     = "starling"
}

variable "node_count" {
  description = "Number of Starling nodes (VMs), spread round-robin over the zones."
  type        = number
  default     = 3
  validation {
    condition     = var.node_count >= 1 && var.node_count <= 32
    error_message = "node_count must be between 1 and 32."
  }
}

variable "zone_count" {
  description = "Number of availability zones to spread the nodes over."
  type        = number
  default     = 3
}

variable "instance_type" {
  description = "EC2 instance type of a node."
  type        = string
  default     = "m7i.xlarge"
}

variable "data_disk_gb" {
  description = "Size of each node's data disk (gp3), mounted at /var/lib/starling."
  type        = number
  default     = 50
}

variable "vpc_cidr" {
  description = "Address range of the VPC; subnet i is the i-th /24 in it."
  type        = string
  default     = "10.40.0.0/16"
}

variable "starling_release_url" {
  description = "URL of the release tarball made by deploy/dist.sh (e.g. a pre-signed S3 URL)."
  type        = string
}

variable "proxy_protocol" {
  description = "Send PROXY protocol v2 from the NLB to the nodes (and make the nodes expect it), so that they see the clients' addresses. Needs a Starling with proxy_protocol."
  type        = bool
  default     = true
}

variable "tls_cert" {
  description = "PEM certificate (chain) for MQTT over TLS on 8883; empty turns 8883 off."
  type        = string
  default     = ""
}

variable "tls_key" {
  description = "PEM private key of tls_cert."
  type        = string
  default     = ""
  sensitive   = true
}

variable "cluster_secret" {
  description = "cluster_secret shared by the nodes; empty for none."
  type        = string
  default     = ""
  sensitive   = true
}

variable "extra_env" {
  description = "More STARLING_* variables for every node (docs/configuration.md)."
  type        = map(string)
  default     = {}
}

variable "client_cidrs" {
  description = "Addresses allowed to connect to MQTT (1883, 8883)."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "ssh_cidrs" {
  description = "Addresses allowed to SSH to the nodes; empty: no SSH."
  type        = list(string)
  default     = []
}

variable "key_name" {
  description = "EC2 key pair for SSH; empty: none."
  type        = string
  default     = ""
}
