package main

import "fmt"

func greeting() string { return "Hello, 世界" }

func main() {
	fmt.Println(greeting())
}
