package main

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"

	yaml "gopkg.in/yaml.v2"
)

// Config is the service configuration. It reads the same YAML keys as
// Wikimedia's Kask, so one file serves both.
type Config struct {
	ServiceName string          `yaml:"service_name"`
	BaseURI     string          `yaml:"base_uri"`
	Address     string          `yaml:"listen_address"`
	Port        int             `yaml:"listen_port"`
	DefaultTTL  int             `yaml:"default_ttl"`
	LogLevel    string          `yaml:"log_level"`
	OpenAPISpec string          `yaml:"openapi_spec"`
	TLS         TLSConfig       `yaml:"tls"`
	Cassandra   CassandraConfig `yaml:"cassandra"`
}

// TLSConfig names the certificate and private key files that switch the listener to HTTPS.
type TLSConfig struct {
	CertPath string `yaml:"cert"`
	KeyPath  string `yaml:"key"`
}

// CassandraConfig is the connection to the Cassandra cluster that stores the values.
type CassandraConfig struct {
	Hosts            []string `yaml:"hosts"`
	Port             int      `yaml:"port"`
	Keyspace         string   `yaml:"keyspace"`
	Table            string   `yaml:"table"`
	LocalDC          string   `yaml:"local_dc"`
	QueryTimeoutMs   int      `yaml:"query_timeout_ms"`
	ConnectTimeoutMs int      `yaml:"connect_timeout_ms"`
	TLS              struct {
		CaPath   string `yaml:"ca"`
		CertPath string `yaml:"cert"`
		KeyPath  string `yaml:"key"`
	} `yaml:"tls"`
	Authentication struct {
		Username string `yaml:"username"`
		Password string `yaml:"password"`
	} `yaml:"authentication"`
}

// Keyspace and table names go into CQL text, so only plain CQL identifiers are accepted.
var cqlIdentifier = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]{0,47}$`)

// defaultConfig returns the values Kask uses for keys that a file leaves out.
func defaultConfig() Config {
	config := Config{
		ServiceName: "kask",
		BaseURI:     "/v1/",
		Address:     "localhost",
		Port:        8080,
		DefaultTTL:  86400,
		LogLevel:    "info",
	}
	config.Cassandra.Hosts = []string{"localhost"}
	config.Cassandra.Port = 9042
	config.Cassandra.Keyspace = "kask"
	config.Cassandra.Table = "values"
	config.Cassandra.QueryTimeoutMs = 12000
	config.Cassandra.ConnectTimeoutMs = 5000
	return config
}

// LoadConfig reads and validates the YAML file at path.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read configuration file: %w", err)
	}
	config, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("invalid configuration file %s: %w", path, err)
	}
	return config, nil
}

// ParseConfig decodes YAML over the defaults and validates the result.
// Unknown keys are rejected so that a misspelt key does not pass unnoticed.
func ParseConfig(data []byte) (*Config, error) {
	config := defaultConfig()
	if err := yaml.UnmarshalStrict(data, &config); err != nil {
		return nil, err
	}
	if err := config.normalize(); err != nil {
		return nil, err
	}
	return &config, nil
}

func (c *Config) normalize() error {
	// The base URI always starts and ends with a slash, whatever the file contains.
	if !strings.HasPrefix(c.BaseURI, "/") {
		c.BaseURI = "/" + c.BaseURI
	}
	if !strings.HasSuffix(c.BaseURI, "/") {
		c.BaseURI += "/"
	}

	if c.DefaultTTL < 0 {
		return fmt.Errorf("default_ttl is %d; use a number of seconds, or 0 for values that never expire", c.DefaultTTL)
	}
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("listen_port %d is not a TCP port number", c.Port)
	}
	if _, ok := parseLevel(c.LogLevel); !ok {
		return fmt.Errorf("log_level %q is not one of debug, info, warning, error, fatal", c.LogLevel)
	}
	if (c.TLS.CertPath == "") != (c.TLS.KeyPath == "") {
		return errors.New("tls.cert and tls.key must be set together, or both left out for plain HTTP")
	}

	cassandra := &c.Cassandra
	if len(cassandra.Hosts) == 0 {
		return errors.New("cassandra.hosts is empty; list at least one Cassandra host")
	}
	for _, name := range []string{cassandra.Keyspace, cassandra.Table} {
		if !cqlIdentifier.MatchString(name) {
			return fmt.Errorf("%q is not a valid keyspace or table name: use a letter, then up to 47 letters, digits or underscores", name)
		}
	}
	if cassandra.QueryTimeoutMs <= 0 || cassandra.ConnectTimeoutMs <= 0 {
		return fmt.Errorf("cassandra.query_timeout_ms (%d) and cassandra.connect_timeout_ms (%d) must be positive",
			cassandra.QueryTimeoutMs, cassandra.ConnectTimeoutMs)
	}
	if (cassandra.Authentication.Username == "") != (cassandra.Authentication.Password == "") {
		return errors.New("cassandra.authentication.username and password must be set together")
	}
	clientTLS := cassandra.TLS
	if clientTLS.CaPath == "" && (clientTLS.CertPath != "" || clientTLS.KeyPath != "") {
		return errors.New("cassandra.tls.cert and cassandra.tls.key need cassandra.tls.ca as well")
	}
	if (clientTLS.CertPath == "") != (clientTLS.KeyPath == "") {
		return errors.New("cassandra.tls.cert and cassandra.tls.key must be set together")
	}
	return nil
}
