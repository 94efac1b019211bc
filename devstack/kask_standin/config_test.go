package main

import (
	"strings"
	"testing"
)

func TestConfigDefaults(t *testing.T) {
	config, err := ParseConfig([]byte("{}"))
	if err != nil {
		t.Fatal(err)
	}
	if config.BaseURI != "/v1/" || config.Port != 8080 || config.DefaultTTL != 86400 {
		t.Errorf("defaults: %+v", config)
	}
	if config.Cassandra.Keyspace != "kask" || config.Cassandra.Table != "values" || config.Cassandra.QueryTimeoutMs != 12000 {
		t.Errorf("Cassandra defaults: %+v", config.Cassandra)
	}
}

func TestConfigFullFile(t *testing.T) {
	text := `
service_name: echoseen-kask
base_uri: echoseen/v1
listen_address: 127.0.0.1
listen_port: 18081
default_ttl: 0
log_level: warning
cassandra:
  hosts: [127.0.0.1]
  port: 19042
  keyspace: kask
  table: values
  local_dc: datacenter1
  query_timeout_ms: 3000
  connect_timeout_ms: 2000
`
	config, err := ParseConfig([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if config.BaseURI != "/echoseen/v1/" {
		t.Errorf("base URI %q, expected slashes added", config.BaseURI)
	}
	if config.DefaultTTL != 0 || config.Cassandra.Port != 19042 || config.Cassandra.LocalDC != "datacenter1" {
		t.Errorf("parsed: %+v", config)
	}
}

func TestConfigRejects(t *testing.T) {
	cases := map[string]string{
		"negative TTL":      "default_ttl: -1",
		"unknown level":     "log_level: verbose",
		"cert without key":  "tls: {cert: /c.pem}",
		"unknown key":       "listen_prot: 80",
		"bad table name":    "cassandra: {table: 'x; DROP'}",
		"no hosts":          "cassandra: {hosts: []}",
		"user only":         "cassandra: {authentication: {username: u}}",
		"client cert no ca": "cassandra: {tls: {cert: /c, key: /k}}",
	}
	for name, text := range cases {
		if _, err := ParseConfig([]byte(text)); err == nil {
			t.Errorf("%s: %q accepted", name, text)
		} else if strings.TrimSpace(err.Error()) == "" {
			t.Errorf("%s: empty error message", name)
		}
	}
}
