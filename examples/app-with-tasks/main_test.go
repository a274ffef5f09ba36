package main

import "testing"

func TestGreeting(t *testing.T) {
	if greeting() != "Hello, 世界" {
		t.Fatal(greeting())
	}
}
