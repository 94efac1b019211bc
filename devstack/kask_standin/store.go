package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/gocql/gocql"
)

// ErrNotFound is returned by Store.Get for a key that is absent or expired.
var ErrNotFound = errors.New("key not found")

// Store keeps the values; the HTTP handler depends on this interface only.
type Store interface {
	Get(ctx context.Context, key string) ([]byte, error)
	Set(ctx context.Context, key string, value []byte, ttlSeconds int) error
	Delete(ctx context.Context, key string) error
	Close()
}

// CassandraStore keeps each value in one row of a table (key text PRIMARY KEY, value blob),
// with the consistency levels Kask uses: LOCAL_QUORUM for reads and writes, EACH_QUORUM for deletes.
type CassandraStore struct {
	session   *gocql.Session
	selectCQL string
	insertCQL string
	deleteCQL string
}

// OpenCassandraStore connects to the cluster that config names.
func OpenCassandraStore(config CassandraConfig) (*CassandraStore, error) {
	cluster := gocql.NewCluster(config.Hosts...)
	cluster.Port = config.Port
	cluster.Keyspace = config.Keyspace
	cluster.Consistency = gocql.LocalQuorum
	cluster.Timeout = time.Duration(config.QueryTimeoutMs) * time.Millisecond
	cluster.ConnectTimeout = time.Duration(config.ConnectTimeoutMs) * time.Millisecond

	// With a local data center, requests go to its nodes first; without one, to every node in turn.
	if config.LocalDC != "" {
		cluster.PoolConfig.HostSelectionPolicy = gocql.DCAwareRoundRobinPolicy(config.LocalDC)
	} else {
		cluster.PoolConfig.HostSelectionPolicy = gocql.RoundRobinHostPolicy()
	}

	if config.TLS.CaPath != "" {
		cluster.SslOpts = &gocql.SslOptions{
			CaPath:   config.TLS.CaPath,
			CertPath: config.TLS.CertPath,
			KeyPath:  config.TLS.KeyPath,
		}
	}
	if config.Authentication.Username != "" {
		cluster.Authenticator = gocql.PasswordAuthenticator{
			Username: config.Authentication.Username,
			Password: config.Authentication.Password,
		}
	}

	session, err := cluster.CreateSession()
	if err != nil {
		return nil, err
	}

	// Names were checked against cqlIdentifier; quoting keeps reserved words such as "values" usable.
	table := fmt.Sprintf(`"%s"."%s"`, config.Keyspace, config.Table)
	return &CassandraStore{
		session:   session,
		selectCQL: fmt.Sprintf(`SELECT value FROM %s WHERE key = ?`, table),
		insertCQL: fmt.Sprintf(`INSERT INTO %s (key, value) VALUES (?, ?) USING TTL ?`, table),
		deleteCQL: fmt.Sprintf(`DELETE FROM %s WHERE key = ?`, table),
	}, nil
}

// Get returns the value stored under key, or ErrNotFound.
func (s *CassandraStore) Get(ctx context.Context, key string) ([]byte, error) {
	var value []byte
	err := s.session.Query(s.selectCQL, key).WithContext(ctx).Consistency(gocql.LocalQuorum).Scan(&value)
	if errors.Is(err, gocql.ErrNotFound) {
		return nil, ErrNotFound
	}
	return value, err
}

// Set writes value under key; Cassandra drops it after ttlSeconds, or never when ttlSeconds is 0.
func (s *CassandraStore) Set(ctx context.Context, key string, value []byte, ttlSeconds int) error {
	return s.session.Query(s.insertCQL, key, value, ttlSeconds).WithContext(ctx).Consistency(gocql.LocalQuorum).Exec()
}

// Delete removes key; deleting an absent key is not an error.
func (s *CassandraStore) Delete(ctx context.Context, key string) error {
	return s.session.Query(s.deleteCQL, key).WithContext(ctx).Consistency(gocql.EachQuorum).Exec()
}

// Close ends the Cassandra session.
func (s *CassandraStore) Close() {
	s.session.Close()
}
