variable "subscription_id" {
  description = "Azure subscription id."
  type        = string
}

variable "location" {
  description = "Azure region (one with availability zones)."
  type        = string
  default     = "westeurope"
}

variable "zones" {
  description = "Availability zones to spread the nodes over (round-robin)."
  type        = list(string)
  default     = ["1", "2", "3"]
}

variable "name" {
  description = "Prefix of every resource name."
  type        = string
  default     = "starling"
}

variable "node_count" {
  description = "Number of Starling nodes (VMs)."
  type        = number
  default     = 3
  validation {
    condition     = var.node_count >= 1 && var.node_count <= 32
    error_message = "node_count must be between 1 and 32."
  }
}

variable "vm_size" {
  description = "VM size of a node."
  type        = string
  default     = "Standard_D4s_v5"
}

variable "data_disk_gb" {
  description = "Size of each node's data disk (Premium SSD), mounted at /var/lib/starling."
  type        = number
  default     = 64
}

variable "vnet_cidr" {
  description = "Address range of the virtual network; the nodes use its first /24."
  type        = string
  default     = "10.40.0.0/16"
}

variable "admin_username" {
  description = "Login of the VMs' administrator."
  type        = string
  default     = "starling-admin"
}

variable "ssh_public_key" {
  description = "SSH public key of the administrator (OpenSSH format)."
  type        = string
}

variable "starling_release_url" {
  description = "URL of the release tarball made by deploy/dist.sh (e.g. a blob SAS URL)."
  type        = string
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
