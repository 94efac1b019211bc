// Command kask-standin is a stand-in for Wikimedia's Kask, written for the
// echoseen local test stack where Kask's source cannot be fetched. It serves
// the same HTTP API from the same YAML configuration and stores values in the
// same Cassandra table layout, but it is not Kask: /healthz, /metrics and
// every log line name it "kask-standin".
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const implementation = "kask-standin"

// Build facts, set at build time with -ldflags "-X main.version=...".
var (
	version   = "unknown"
	gitCommit = "unknown"
	buildDate = "unknown"
	buildHost = "unknown"
)

const shutdownTimeout = 10 * time.Second

func main() {
	configPath := flag.String("config", "/etc/kask/config.yaml", "path of the YAML configuration file (Kask's format)")
	printVersion := flag.Bool("version", false, "print the implementation name and build facts, then exit")
	flag.Parse()

	if *printVersion {
		fmt.Printf("%s %s (go %s, built %s on %s)\n", implementation, version, runtime.Version(), buildDate, buildHost)
		return
	}

	config, err := LoadConfig(*configPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", implementation, err)
		os.Exit(2)
	}
	os.Exit(run(config))
}

func run(config *Config) int {
	logger := NewLogger(os.Stdout, config.ServiceName, config.LogLevel)
	logger.Info("starting %s %s (a stand-in for Wikimedia Kask, not Kask itself; git %s, %s, built %s on %s)",
		implementation, version, gitCommit, runtime.Version(), buildDate, buildHost)
	if config.OpenAPISpec != "" {
		logger.Warning("openapi_spec is set to %s but %s does not serve /openapi", config.OpenAPISpec, implementation)
	}

	store, err := OpenCassandraStore(config.Cassandra)
	if err != nil {
		logger.Fatal("connecting to Cassandra at %v port %d, keyspace %s, failed: %v",
			config.Cassandra.Hosts, config.Cassandra.Port, config.Cassandra.Keyspace, err)
		return 1
	}
	defer store.Close()
	logger.Info("connected to Cassandra at %v port %d, table %s.%s, default TTL %d s",
		config.Cassandra.Hosts, config.Cassandra.Port, config.Cassandra.Keyspace, config.Cassandra.Table, config.DefaultTTL)

	registerMetrics()
	keys := &keyHandler{store: store, baseURI: config.BaseURI, defaultTTL: config.DefaultTTL, log: logger}
	mux := http.NewServeMux()
	mux.Handle(config.BaseURI, instrument(keys))
	mux.Handle("/metrics", promhttp.Handler())
	mux.Handle("/healthz", healthzHandler(config.ServiceName))

	server := &http.Server{
		Addr:              fmt.Sprintf("%s:%d", config.Address, config.Port),
		Handler:           mux,
		ReadHeaderTimeout: 30 * time.Second,
	}

	// SIGTERM and SIGINT stop the listener and let requests in flight finish.
	stopped := make(chan struct{})
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		received := <-signals
		logger.Info("received signal %s; shutting down", received)
		ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if err := server.Shutdown(ctx); err != nil {
			logger.Warning("shutdown did not finish within %s: %v", shutdownTimeout, err)
		}
		close(stopped)
	}()

	scheme := "http"
	if config.TLS.CertPath != "" {
		scheme = "https"
	}
	logger.Info("serving %s://%s%s", scheme, server.Addr, config.BaseURI)
	if scheme == "https" {
		err = server.ListenAndServeTLS(config.TLS.CertPath, config.TLS.KeyPath)
	} else {
		err = server.ListenAndServe()
	}
	if !errors.Is(err, http.ErrServerClosed) {
		logger.Fatal("HTTP server on %s failed: %v", server.Addr, err)
		return 1
	}
	<-stopped
	logger.Info("stopped")
	return 0
}
