package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// memoryStore keeps values in a map so the HTTP layer can be tested without Cassandra.
type memoryStore struct {
	mu      sync.Mutex
	values  map[string][]byte
	ttls    map[string]int
	failure error
}

func newMemoryStore() *memoryStore {
	return &memoryStore{values: map[string][]byte{}, ttls: map[string]int{}}
}

func (m *memoryStore) Get(_ context.Context, key string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failure != nil {
		return nil, m.failure
	}
	value, ok := m.values[key]
	if !ok {
		return nil, ErrNotFound
	}
	return value, nil
}

func (m *memoryStore) Set(_ context.Context, key string, value []byte, ttlSeconds int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failure != nil {
		return m.failure
	}
	m.values[key] = value
	m.ttls[key] = ttlSeconds
	return nil
}

func (m *memoryStore) Delete(_ context.Context, key string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failure != nil {
		return m.failure
	}
	delete(m.values, key)
	return nil
}

func (m *memoryStore) Close() {}

func newTestServer(t *testing.T, store Store) *httptest.Server {
	t.Helper()
	keys := &keyHandler{store: store, baseURI: "/echoseen/v1/", defaultTTL: 60, log: NewLogger(io.Discard, "test", "debug")}
	mux := http.NewServeMux()
	mux.Handle("/echoseen/v1/", instrument(keys))
	mux.Handle("/healthz", healthzHandler("test"))
	server := httptest.NewServer(mux)
	t.Cleanup(server.Close)
	return server
}

func send(t *testing.T, method, url, body string) (*http.Response, string) {
	t.Helper()
	request, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	response, err := http.DefaultClient.Do(request)
	if err != nil {
		t.Fatal(err)
	}
	defer response.Body.Close()
	data, err := io.ReadAll(response.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response, string(data)
}

func TestStatusTable(t *testing.T) {
	store := newMemoryStore()
	store.values["present"] = []byte("v")
	server := newTestServer(t, store)
	base := server.URL + "/echoseen/v1/"

	cases := []struct {
		method, path, body string
		status             int
	}{
		{"GET", "present", "", 200},
		{"GET", "absent", "", 404},
		{"POST", "new", "value", 201},
		{"POST", "new", "", 400},
		{"PUT", "present", "value", 400},
		{"PATCH", "present", "value", 400},
		{"GET", "present?x=1", "", 400},
		{"POST", "present?x", "value", 400},
		{"GET", "a%2Fb", "", 404},
		{"GET", "a/b", "", 404},
		{"GET", "", "", 404},
		{"DELETE", "present", "", 204},
		{"DELETE", "absent", "", 204},
	}
	for _, c := range cases {
		response, _ := send(t, c.method, base+c.path, c.body)
		if response.StatusCode != c.status {
			t.Errorf("%s %s: status %d, expected %d", c.method, c.path, response.StatusCode, c.status)
		}
	}
}

func TestPostStoresWithDefaultTTL(t *testing.T) {
	store := newMemoryStore()
	server := newTestServer(t, store)

	response, body := send(t, "POST", server.URL+"/echoseen/v1/enwiki%3Aecho%3Aseen", "\xff\x00bytes")
	if response.StatusCode != 201 || body != "" {
		t.Fatalf("POST: status %d body %q, expected 201 and an empty body", response.StatusCode, body)
	}
	if got := string(store.values["enwiki:echo:seen"]); got != "\xff\x00bytes" {
		t.Errorf("stored %q under the decoded key", got)
	}
	if store.ttls["enwiki:echo:seen"] != 60 {
		t.Errorf("stored with TTL %d, expected the default 60", store.ttls["enwiki:echo:seen"])
	}
}

func TestGetContentType(t *testing.T) {
	store := newMemoryStore()
	store.values["k"] = []byte("v")
	server := newTestServer(t, store)

	response, body := send(t, "GET", server.URL+"/echoseen/v1/k", "")
	if got := response.Header.Get("Content-Type"); got != "application/octet-stream" {
		t.Errorf("Content-Type %q", got)
	}
	if body != "v" {
		t.Errorf("body %q", body)
	}
}

func TestProblemBody(t *testing.T) {
	server := newTestServer(t, newMemoryStore())

	response, body := send(t, "GET", server.URL+"/echoseen/v1/absent", "")
	if got := response.Header.Get("Content-Type"); got != "application/json" {
		t.Errorf("Content-Type %q", got)
	}
	var decoded map[string]string
	if err := json.Unmarshal([]byte(body), &decoded); err != nil {
		t.Fatalf("body %q is not a JSON object: %v", body, err)
	}
	if !strings.HasSuffix(decoded["type"], "/not_found") {
		t.Errorf("type %q", decoded["type"])
	}
	if decoded["instance"] != "/echoseen/v1/absent" {
		t.Errorf("instance %q", decoded["instance"])
	}
	for _, field := range []string{"title", "detail"} {
		if decoded[field] == "" {
			t.Errorf("field %s is empty", field)
		}
	}
}

func TestStoreFailureIsServerError(t *testing.T) {
	store := newMemoryStore()
	store.failure = errors.New("no hosts available")
	server := newTestServer(t, store)

	for _, method := range []string{"GET", "POST", "DELETE"} {
		response, body := send(t, method, server.URL+"/echoseen/v1/k", "value")
		if response.StatusCode != 500 {
			t.Errorf("%s: status %d, expected 500", method, response.StatusCode)
		}
		if !strings.Contains(body, "/server_error") {
			t.Errorf("%s: body %q has no server_error type", method, body)
		}
	}
}

func TestHealthzNamesStandin(t *testing.T) {
	server := newTestServer(t, newMemoryStore())

	response, body := send(t, "GET", server.URL+"/healthz", "")
	if response.StatusCode != 200 {
		t.Fatalf("status %d", response.StatusCode)
	}
	var decoded map[string]string
	if err := json.Unmarshal([]byte(body), &decoded); err != nil {
		t.Fatalf("body %q: %v", body, err)
	}
	if decoded["implementation"] != "kask-standin" {
		t.Errorf("implementation %q", decoded["implementation"])
	}
}
